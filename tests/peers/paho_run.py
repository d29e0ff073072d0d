"""Runs one Eclipse Paho interoperability suite (client_test or client_test5, from the
directory given) against host 127.0.0.1 and a port, as its own __main__ block would with
-p, then prints one line: RESULT <json> with the tests run and the names of those that failed.

The suites parse their options and then call unittest.main(), which parses them again;
importing the module and setting its globals avoids that (the suites stay unchanged, where
they are). Usage: paho_run.py <suite dir> <suite> <port> [Test.test_name ...]"""
import importlib
import json
import sys
import unittest

suite_dir, suite, port, only = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
sys.argv = [suite]
sys.path.insert(0, suite_dir)
m = importlib.import_module(suite)
m.host, m.port = "127.0.0.1", port
prefix = "client_test5/" if suite == "client_test5" else ""
m.topic_prefix = prefix
m.topics = [prefix + t for t in ["TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA"]]
m.wildtopics = [prefix + t for t in ["TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#"]]
m.nosubscribe_topics = ("test/nosubscribe",)
loader = unittest.TestLoader()
tests = loader.loadTestsFromNames(only, m) if only else loader.loadTestsFromModule(m)
result = unittest.TextTestRunner(verbosity=2).run(tests)
failed = [t.id().rsplit(".", 1)[-1] for t, _ in result.failures + result.errors]
print("RESULT " + json.dumps({"run": result.testsRun, "failed": failed}), flush=True)
