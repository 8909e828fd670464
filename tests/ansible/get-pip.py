"""What ansible-test runs in place of get-pip.py to put pip into an empty virtualenv.

ansible-test downloads get-pip.py from ci-files.testing.ansible.com, which CI and these
machines cannot reach (they reach the package index only). tests/check-ansible.sh saves this
file where ansible-test looks for its cached copy: the interpreter's own ensurepip puts a pip
into the virtualenv, and that pip installs what ansible-test asked for (its pinned pip, and so
on) from the index.

Called as get-pip.py is: pip's options and requirements, plus get-pip's own --no-setuptools
and --no-wheel, which say only that setuptools and wheel are not to be added.
"""
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
# In a child: ensurepip sets PIP_CONFIG_FILE=/dev/null in its own process, which would hide
# the machine's pip configuration (its index and certificates) from the install below.
subprocess.check_call([sys.executable, "-m", "ensurepip"])
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--upgrade"] + args))
