import unittest

from message import message


class MessageTest(unittest.TestCase):
    def test_names_the_environment_version_and_stage(self):
        m = message("stage-failed", "production", "v42", "production: v42 failed verify", "verify")
        self.assertEqual(m["environment"], "production")
        self.assertEqual(m["version"], "v42")
        self.assertEqual(m["stage"], "verify")
        self.assertEqual(m["kind"], "stage-failed")

    def test_leaves_out_a_missing_stage(self):
        self.assertNotIn("stage", message("succeeded", "staging", "v1", "ok"))


if __name__ == "__main__":
    unittest.main()
