"""The fleet report's filters on crafted answers: a host that did not answer,
lines that are not JSON, findings, a domain that could not be checked, and
names and details built to forge table lines. Run by tests/e2e_ansible.rs:
python3 -m unittest discover -s ansible/tests
"""

import json
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "filter_plugins"))

from xftrace_fleet import xftrace_fleet, xftrace_fleet_table  # noqa: E402


def lines(*objs):
    return "\n".join(json.dumps(o) for o in objs)


class Vars(dict):
    """hostvars: a host's variables by name, a KeyError for an unknown host."""


EVIL = "web\n01\x1b[2J"

ANSWERED = {
    "host": "kvm1",
    "kernel": "6.1.0-41-amd64",
    "os": "Debian 12",
    "version": "xftrace 0.1.0",
    "list": {
        "rc": 0,
        "stdout": lines(
            {"domain": "web01", "state": "running", "enrolled": "yes", "tracing": "no",
             "last_check": None, "system_map": None},
            {"domain": EVIL, "state": "running", "enrolled": "yes", "tracing": "yes",
             "last_check": {"time": 1.0, "findings": {"high": 0, "medium": 0, "low": 2},
                            "failed": False, "kernel": "6.1.0-57-cloud-amd64"},
             "system_map": None},
            {"domain": "old", "state": "off", "enrolled": "no", "tracing": "no",
             "last_check": None, "system_map": None},
        ) + "\nwarning: not json",
        "stderr": "",
    },
    "check": {
        "ran": True,
        "rc": 1,
        "stdout": lines(
            {"domain": "domain web01", "time": 2.0, "kind": "syscall-table", "severity": "high",
             "owner": "rk", "detail": "x\nFORGED LINE", "addresses": [], "evidence": ""},
            {"summary": {"domain": "domain web01", "time": 2.0, "duration": 0.2,
                         "findings": {"high": 1, "medium": 0, "low": 0}, "new": None,
                         "clean": False, "failed": None, "kernel": "6.1.0-57-cloud-amd64"}},
            {"error": "no xftrace control block", "exit": 4, "domain": EVIL},
            {"error": "some domains could not be checked", "exit": 2},
        ),
        "stderr": "",
    },
}


class Fleet(unittest.TestCase):
    def setUp(self):
        hv = Vars(kvm1=Vars(xftrace_report_host=ANSWERED), kvm2=Vars())
        self.r = xftrace_fleet(hv, ["kvm2", "kvm1", "kvm3"], "2026-12-07T00:00:00Z")

    def test_every_host_is_reported_answered_or_not(self):
        hosts = {h["host"]: h for h in self.r["hosts"]}
        self.assertEqual(sorted(hosts), ["kvm1", "kvm2", "kvm3"])
        for silent in ("kvm2", "kvm3"):
            self.assertTrue(hosts[silent]["errors"], silent)
            self.assertEqual(hosts[silent]["domains"], [])
        self.assertEqual(self.r["totals"]["hosts_with_errors"], 3)  # kvm1: a line not JSON
        self.assertTrue(any("not JSON" in e for e in hosts["kvm1"]["errors"]))

    def test_findings_kernels_and_errors_land_on_their_domain(self):
        kvm1 = next(h for h in self.r["hosts"] if h["host"] == "kvm1")
        d = {x["domain"]: x for x in kvm1["domains"]}
        self.assertEqual(d["web01"]["findings"], {"high": 1, "medium": 0, "low": 0})
        self.assertEqual(d["web01"]["kernel"], "6.1.0-57-cloud-amd64")
        self.assertEqual(d["web01"]["found"][0]["kind"], "syscall-table")
        self.assertEqual(d[EVIL]["error"], "no xftrace control block")
        self.assertIsNone(d[EVIL]["checked"])
        self.assertEqual(d["old"]["checked"], None)
        t = self.r["totals"]
        self.assertEqual((t["domains"], t["running"], t["with_findings"], t["not_checked"]), (3, 2, 1, 1))
        # check --all's closing error repeats the domain's: not the host's.
        self.assertFalse(any("some domains" in e for e in kvm1["errors"]))

    def test_the_table_cannot_be_forged(self):
        table = xftrace_fleet_table(self.r)
        for line in table.splitlines():
            self.assertFalse(line.startswith("FORGED"), line)
            self.assertNotIn("\x1b", line)
        self.assertIn("web\\x0a01\\x1b[2J", table)
        self.assertIn("1 high", table)
        self.assertIn("NOT CHECKED", table)
        self.assertIn("NO ANSWER", table)
        json.dumps(self.r)  # the JSON report serializes


if __name__ == "__main__":
    unittest.main()
