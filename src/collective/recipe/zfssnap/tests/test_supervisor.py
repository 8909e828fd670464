"""The supervisor adapter against a real supervisord (no ZFS needed: it runs on this machine).

The programs write "start NAME" and "stop NAME" to an events file: the order in which the
adapter starts and stops them is read from there.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

import supervisor as supervisor_package

from collective.recipe.zfssnap import supervisor


PROGRAM = textwrap.dedent("""\
    import os, signal, sys, time
    events, name = sys.argv[1], sys.argv[2]
    def event(what):
        with open(events, "a") as f:
            f.write("%s %s\\n" % (what, name))
    def stop(signum, frame):
        event("stop")
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    event("start")
    while True:
        time.sleep(1)
    """)

CONF = """\
[unix_http_server]
file = %(here)s/supervisord.sock
username = site
password = s3cret

[supervisord]
logfile = %(here)s/supervisord.log
pidfile = %(here)s/supervisord.pid
childlogdir = %(here)s
directory = %(here)s

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl = unix://%(here)s/supervisord.sock ; inline comments are allowed
username = site
password = {password}

[program:client]
command = {python} %(here)s/program.py %(here)s/events client
priority = 30
startsecs = 1

[program:zeo]
command = {python} %(here)s/program.py %(here)s/events zeo
priority = 5
; RUNNING after a second: its clients are started only then
startsecs = 1

[program:extra]
command = {python} %(here)s/program.py %(here)s/events extra
priority = 40
startsecs = 0
autostart = false

[program:one]
command = {python} %(here)s/program.py %(here)s/events one
startsecs = 0

[group:workers]
programs = one
priority = 50
"""


class Supervisord:
    """A layer (zope.testrunner runs no setUpClass): one supervisord for the tests below."""

    @classmethod
    def setUp(cls):
        cls.dir = tempfile.mkdtemp(prefix="zfssnap-supervisor-")
        with open(os.path.join(cls.dir, "program.py"), "w") as f:
            f.write(PROGRAM)
        cls.conf = cls.write_conf("supervisord.conf", "s3cret")
        egg = os.path.dirname(os.path.dirname(supervisor_package.__file__))
        cls.daemon = [sys.executable, "-c", "import sys; sys.path.insert(0, %r); from "
                      "supervisor.supervisord import main; sys.argv[1:] = ['-c', %r]; main()"
                      % (egg, cls.conf)]
        subprocess.run(cls.daemon, check=True)
        cls.sup = supervisor.Supervisor(cls.conf, cls.daemon, timeout=20)
        deadline = time.monotonic() + 20
        while not cls.sup.running() and time.monotonic() < deadline:
            time.sleep(0.1)

    @classmethod
    def write_conf(cls, name, password):
        path = os.path.join(cls.dir, name)
        with open(path, "w") as f:
            f.write(CONF.format(python=sys.executable, password=password))
        return path

    @classmethod
    def tearDown(cls):
        try:
            pid = cls.sup.pid()
            cls.sup.shutdown([pid], time.monotonic() + 20)
        except supervisor.SupervisorError:
            pass
        shutil.rmtree(cls.dir)


class SupervisorAdapterTest(unittest.TestCase):
    layer = Supervisord

    def setUp(self):
        for name in ("dir", "conf", "sup", "daemon", "write_conf"):
            setattr(self, name, getattr(Supervisord, name))

    def events(self, count=0):
        """The events written since the last call (waiting until there are `count`)."""
        path = os.path.join(self.dir, "events")
        deadline = time.monotonic() + 20
        while True:
            try:
                with open(path) as f:
                    lines = [line for line in f.read().split("\n") if line]
            except FileNotFoundError:
                lines = []
            if len(lines) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if os.path.exists(path):
            os.remove(path)
        return lines

    def wait_running(self, names):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all(self.sup.states().get(n) == "RUNNING" for n in names):
                return
            time.sleep(0.1)
        self.fail("%s not RUNNING: %s" % (names, self.sup.states()))

    def test_client_config_as_supervisorctl_reads_it(self):
        url, user, password = supervisor.read_client_config(self.conf)
        self.assertEqual(url, "unix://%s/supervisord.sock" % self.dir)
        self.assertEqual((user, password), ("site", "s3cret"))

    def test_processes_in_priority_order_with_groups(self):
        procs = self.sup.processes()
        self.assertEqual(list(procs), ["zeo", "client", "extra", "workers:one"])
        self.assertEqual(procs["workers:one"].group, "workers")
        self.assertFalse(procs["extra"].autostart)
        self.assertIsNone(procs["extra"].pid)
        self.assertGreater(self.sup.pid(), 1)
        self.sup.programs = ["workers", "client"]
        try:
            self.assertEqual(self.sup.selected(procs), ["client", "workers:one"])
        finally:
            self.sup.programs = []

    def test_stop_in_reverse_priority_and_start_in_priority_order(self):
        self.wait_running(["zeo", "client", "workers:one"])
        self.events(3)
        names = ["zeo", "client", "workers:one"]
        self.assertEqual(self.sup.stop(names), [])
        self.assertEqual(self.sup.states()["zeo"], "STOPPED")
        self.assertEqual(self.events(3), ["stop one", "stop client", "stop zeo"])
        self.assertEqual(self.sup.start(["client", "workers:one", "zeo"]), [])
        self.assertEqual(self.events(3), ["start zeo", "start client", "start one"])
        self.assertEqual(self.sup.start(["zeo"]), [])  # already running: not an error

    def test_wrong_credentials_are_an_error_not_a_stopped_supervisord(self):
        wrong = supervisor.Supervisor(self.write_conf("wrong.conf", "nope"), timeout=5)
        with self.assertRaises(supervisor.SupervisorError) as caught:
            wrong.running()
        self.assertNotIsInstance(caught.exception, supervisor.NotRunning)
        self.assertIn("refused the credentials", caught.exception.message)

    def test_no_supervisord_is_not_running(self):
        conf = self.write_conf("elsewhere.conf", "s3cret")
        with open(conf) as f:
            text = f.read()
        with open(conf, "w") as f:
            f.write(text.replace("unix://%(here)s/supervisord.sock",
                                 "unix://%(here)s/nobody.sock"))
        self.assertFalse(supervisor.Supervisor(conf, timeout=5).running())

    def test_shutdown_and_start_again(self):
        self.wait_running(["zeo", "client", "workers:one"])
        pids = [self.sup.pid()] + [p.pid for p in self.sup.processes().values() if p.pid]
        self.assertEqual(self.sup.shutdown(pids, time.monotonic() + 20), [])
        self.assertFalse(self.sup.running())
        self.sup.start_daemon()
        self.assertTrue(self.sup.running())
        self.wait_running(["zeo", "client", "workers:one"])
        self.assertNotIn(self.sup.pid(), pids)


IMPOSTOR = textwrap.dedent("""\
    import http.server, sys
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            with open(sys.argv[2], "a") as f:
                f.write(self.headers.get("Authorization", "-") + "\\n")
            self.rfile.read(int(self.headers["Content-Length"]))
            body = (b"<?xml version='1.0'?><methodResponse><params><param><value><struct>"
                    b"<member><name>statename</name><value><string>RUNNING</string></value>"
                    b"</member></struct></value></param></params></methodResponse>")
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    """)


@unittest.skipUnless(os.path.exists("/proc/net/tcp"), "reads Linux's /proc/net/tcp")
class InetListenerTest(unittest.TestCase):
    """Anyone may listen on supervisord's inet port while it is down: the adapter talks only
    to the site's supervisord, and sends no credentials to anything else."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="zfssnap-inet-")
        self.seen = os.path.join(self.dir, "requests")
        self.proc = subprocess.Popen([sys.executable, "-c", IMPOSTOR, "-", self.seen],
                                     stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        self.conf = os.path.join(self.dir, "supervisord.conf")
        with open(self.conf, "w") as f:
            f.write("[supervisorctl]\nserverurl = http://127.0.0.1:%d\nusername = site\n"
                    "password = s3cret\n" % self.port)

    def tearDown(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        shutil.rmtree(self.dir)

    def test_another_process_on_the_port_is_not_trusted(self):
        sup = supervisor.Supervisor(self.conf, timeout=5,
                                    pidfiles=[os.path.join(self.dir, "supervisord.pid")])
        with self.assertRaises(supervisor.SupervisorError) as caught:
            sup.running()
        self.assertIn("(pid %d: " % self.proc.pid, caught.exception.message)
        self.assertIn("is not this site's supervisord", caught.exception.message)
        self.assertFalse(os.path.exists(self.seen), "it was sent a request")

    def test_the_process_of_the_sites_pid_file_is(self):
        pidfile = os.path.join(self.dir, "supervisord.pid")
        with open(pidfile, "w") as f:
            f.write("%d\n" % self.proc.pid)
        sup = supervisor.Supervisor(self.conf, timeout=5, pidfiles=[pidfile])
        self.assertTrue(sup.running())
        with open(self.seen) as f:
            self.assertTrue(f.read().startswith("Basic "))
