"""wss://: the manager's certificate chain and host name are verified (ca_file
or the system store); tls_insecure connects anyway and warns at every connect.
A throwaway CA is made with openssl for each run."""
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import unittest

from harness import Agent, Scratch, require_root
from refmanager import Manager


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d):
    """ca.pem (trusted by the test), good.pem for localhost/127.0.0.1, wrong.pem
    for another name, both signed by the CA; rogue.pem self-signed for localhost."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=hostagent test CA",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    for name, san in (("good", "DNS:localhost,IP:127.0.0.1"), ("wrong", "DNS:other.example")):
        with open(os.path.join(d, name + ".ext"), "w") as f:
            f.write("subjectAltName=%s\nbasicConstraints=CA:FALSE\n" % san)
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=%s" % name, "-keyout", name + ".key",
                "-out", name + ".csr", cwd=d)
        openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", name + ".ext", "-out", name + ".pem", cwd=d)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost", "-keyout", "rogue.key", "-out", "rogue.pem", cwd=d)


class TlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_root()
        if not shutil.which("openssl"):
            raise AssertionError("openssl is needed to make the test CA")
        cls.pki = tempfile.mkdtemp(prefix="hostagent-pki-")
        os.chmod(cls.pki, 0o755)
        make_pki(cls.pki)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.pki, ignore_errors=True)

    def setUp(self):
        self.scratch = Scratch("16m")
        self.agent = None
        self.manager = None

    def tearDown(self):
        try:
            if self.agent and self.agent.proc.poll() is None:
                self.assertEqual(self.agent.stop(), 0, self.agent.log()[-3000:])
        finally:
            if self.manager:
                self.manager.stop()
            self.scratch.close()

    def serve(self, cert):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(self.pki, cert + ".pem"), os.path.join(self.pki, cert + ".key"))
        self.manager = Manager(ssl_context=ctx, url_host="localhost").start()

    def run_agent(self, **extra):
        self.agent = Agent(self.manager, self.scratch, extra=extra)

    def assert_never_connects(self, what):
        time.sleep(3)  # several attempts (reconnect_min 200 ms)
        self.assertEqual(self.manager.connections, [], what)
        self.assertIn("connection failed", self.agent.log())
        self.assertIn("certificate was not accepted", self.agent.log())

    def test_trusted_certificate_is_accepted(self):
        self.serve("good")
        self.run_agent(ca_file=os.path.join(self.pki, "ca.pem"))
        conn = self.manager.wait_connection(timeout=20)
        self.assertEqual(conn.messages[0][1]["subject"], "agent.hello")
        self.assertEqual(conn.headers.get("authorization"), "Bearer it-token-0123456789")
        self.assertNotIn("tls_insecure", self.agent.log())

    def test_untrusted_certificate_is_refused(self):
        self.serve("rogue")
        self.run_agent(ca_file=os.path.join(self.pki, "ca.pem"))
        self.assert_never_connects("a self-signed certificate outside the CA must be refused")

    def test_system_store_does_not_know_the_test_ca(self):
        self.serve("good")
        self.run_agent()
        self.assert_never_connects("without ca_file the test CA is unknown")

    def test_wrong_host_name_is_refused(self):
        self.serve("wrong")
        self.run_agent(ca_file=os.path.join(self.pki, "ca.pem"))
        self.assert_never_connects("a certificate for another name must be refused")

    def test_tls_insecure_connects_and_warns_at_every_connect(self):
        self.serve("rogue")
        self.run_agent(tls_insecure="true")
        self.manager.wait_connection(timeout=20)
        for c in self.manager.connections:
            self.manager.loop.call_soon_threadsafe(c.writer.transport.abort)
        self.manager.wait_for(lambda: len(self.manager.connections) >= 2, 20, "a second connection")
        self.assertGreaterEqual(self.agent.log().count("tls_insecure is set"), 2)


class TokenTest(unittest.TestCase):
    def setUp(self):
        require_root()
        self.scratch = Scratch("16m")
        self.manager = Manager().start()
        self.agent = None

    def tearDown(self):
        try:
            if self.agent and self.agent.proc.poll() is None:
                self.assertEqual(self.agent.stop(), 0)
        finally:
            self.manager.stop()
            self.scratch.close()

    def test_token_file_readable_by_others_is_warned_and_the_token_never_logged(self):
        path = os.path.join(self.scratch.base, "token")
        with open(path, "w") as f:
            f.write("s3cret-token-from-file\n")
        os.chmod(path, 0o644)
        self.agent = Agent(self.manager, self.scratch, extra={"token": None, "token_file": path})
        conn = self.manager.wait_connection(timeout=20)
        self.assertEqual(conn.headers.get("authorization"), "Bearer s3cret-token-from-file")
        log = self.agent.log()
        self.assertIn("token_file is readable by group or others", log)
        self.assertNotIn("s3cret-token-from-file", log)
