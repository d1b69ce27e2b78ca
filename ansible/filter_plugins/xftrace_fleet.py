"""Filters of report.yml: one report of a fleet from what each libvirt host's
xftrace answered (roles/xftrace/tasks/report.yml).

xftrace_fleet(hostvars, hosts, generated) -> the report (a dict, fleet.json)
xftrace_fleet_table(report)               -> the same as a readable table

Every string in the answers can come from a guest or a domain definition
(names, kernel releases, findings' details): the JSON keeps them as strings,
the table escapes control characters and cuts long ones. A line that is not
JSON, or a host that did not answer, is reported, never dropped.
"""

import json

SEVERITIES = ("high", "medium", "low")


def _int(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _lines(text):
    """JSON Lines: the objects, and the lines that were not JSON objects."""
    objs, bad = [], []
    for line in (text or "").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            v = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if isinstance(v, dict):
            objs.append(v)
        else:
            bad.append(line)
    return objs, bad


def _name(described):
    """A finding's `domain` is `domain NAME`; an error object's is NAME."""
    s = str(described)
    return s[len("domain "):] if s.startswith("domain ") else s


def _last_line(text):
    lines = [x for x in (text or "").splitlines() if x.strip()]
    return lines[-1] if lines else ""


def _host(name, data):
    host = {
        "host": name,
        "os": None,
        "kernel": None,
        "xftrace": None,
        "errors": [],
        "domains": [],
    }
    if not data:
        host["errors"].append("no answer: the host was unreachable, or gathering failed on it")
        return host
    host["os"] = (data.get("os") or "").strip() or None
    host["kernel"] = data.get("kernel") or None
    host["xftrace"] = (data.get("version") or "").strip() or None
    lst = data.get("list") or {}
    rows, bad = _lines(lst.get("stdout"))
    rc = _int(lst.get("rc"))
    for o in rows:
        if "error" in o:
            host["errors"].append("list: %s" % o["error"])
    if rc != 0 and not any("error" in o for o in rows):
        host["errors"].append(
            "list: exit %s: %s" % (lst.get("rc"), _last_line(lst.get("stderr")) or "no output")
        )
    for line in bad:
        host["errors"].append("list: not JSON: %s" % line[:200])
    domains = {}
    for o in rows:
        if "domain" not in o or "error" in o:
            continue
        last = o.get("last_check") if isinstance(o.get("last_check"), dict) else None
        d = {
            "domain": str(o["domain"]),
            "state": o.get("state"),
            "enrolled": o.get("enrolled"),
            "tracing": o.get("tracing"),
            "kernel": last.get("kernel") if last else None,
            "system_map": o.get("system_map"),
            "checked": None,
            "findings": {s: 0 for s in SEVERITIES},
            "found": [],
            "error": None,
        }
        if last:
            d["checked"] = last.get("time")
            found = last.get("findings") or {}
            d["findings"] = {s: _int(found.get(s)) or 0 for s in SEVERITIES}
            if last.get("failed"):
                d["error"] = "the last check, or a part of it, could not run"
        domains[d["domain"]] = d
        host["domains"].append(d)
    check = data.get("check") or {}
    if str(check.get("ran")).lower() == "true":
        objs, bad = _lines(check.get("stdout"))
        for line in bad:
            host["errors"].append("check: not JSON: %s" % line[:200])

        def domain(name):
            if name not in domains:
                # Checked but not listed (it started in between).
                domains[name] = {
                    "domain": name, "state": "running", "enrolled": "yes", "tracing": None,
                    "kernel": None, "system_map": None, "checked": None,
                    "findings": {s: 0 for s in SEVERITIES}, "found": [], "error": None,
                }
                host["domains"].append(domains[name])
            return domains[name]

        for o in objs:
            if "summary" in o and isinstance(o["summary"], dict):
                s = o["summary"]
                d = domain(_name(s.get("domain")))
                d["checked"] = s.get("time")
                d["kernel"] = s.get("kernel") or d["kernel"]
                found = s.get("findings") or {}
                d["findings"] = {k: _int(found.get(k)) or 0 for k in SEVERITIES}
                d["error"] = s.get("failed")
            elif "kind" in o:
                d = domain(_name(o.get("domain")))
                d["found"].append({
                    k: o.get(k) for k in ("kind", "severity", "owner", "detail", "time")
                })
            elif "error" in o and "domain" in o:
                d = domain(_name(o["domain"]))
                d["error"] = o["error"]
                d["checked"] = None
            elif "error" in o:
                # check --all's closing error ("some domain could not be
                # checked") repeats what the domains say; anything else is
                # the host's.
                if not any(x.get("error") for x in domains.values()):
                    host["errors"].append("check: %s" % o["error"])
        rc = _int(check.get("rc"))
        if rc not in (0, 1, 2) and not objs:
            host["errors"].append(
                "check: exit %s: %s" % (check.get("rc"), _last_line(check.get("stderr")) or "no output")
            )
    return host


def xftrace_fleet(hostvars, hosts, generated=None):
    hosts = list(hosts or [])
    report = {"generated": generated, "hosts": []}
    for name in sorted(hosts):
        try:
            data = hostvars[name].get("xftrace_report_host")
        except KeyError:
            data = None
        report["hosts"].append(_host(name, data))
    ds = [d for h in report["hosts"] for d in h["domains"]]
    report["totals"] = {
        "hosts": len(report["hosts"]),
        "hosts_with_errors": sum(1 for h in report["hosts"] if h["errors"]),
        "domains": len(ds),
        "running": sum(1 for d in ds if d["state"] == "running"),
        "enrolled": sum(1 for d in ds if d["enrolled"] == "yes"),
        "tracing": sum(1 for d in ds if d["tracing"] == "yes"),
        "with_findings": sum(1 for d in ds if d["findings"]["high"] or d["findings"]["medium"]),
        "not_checked": sum(1 for d in ds if d["error"]),
        "findings": {s: sum(d["findings"][s] for d in ds) for s in SEVERITIES},
    }
    return report


def _text(v, width=None):
    """One table cell: control characters as \\xNN, cut to width."""
    if v is None or v == "":
        return "-"
    s = "".join(c if 0x20 <= ord(c) != 0x7F else "\\x%02x" % ord(c) for c in str(v))
    if width and len(s) > width:
        s = s[: width - 1] + "~"
    return s


def _found(d):
    h, m, lo = (d["findings"][s] for s in SEVERITIES)
    if d["error"] and not (h or m):
        return "NOT CHECKED" if d["checked"] is None else "check incomplete"
    if d["checked"] is None:
        return "never checked" if d["enrolled"] == "yes" else "-"
    parts = ["%d %s" % (n, s) for n, s in ((h, "high"), (m, "medium")) if n]
    return ", ".join(parts) if parts else "clean" + (" (%d low)" % lo if lo else "")


def xftrace_fleet_table(report):
    t = report["totals"]
    out = [
        "xftrace fleet report, %s: %d hosts (%d with errors), %d domains (%d running, %d enrolled, "
        "%d tracing); %d with findings (%d high, %d medium), %d not fully checked"
        % (_text(report.get("generated")), t["hosts"], t["hosts_with_errors"], t["domains"],
           t["running"], t["enrolled"], t["tracing"], t["with_findings"], t["findings"]["high"],
           t["findings"]["medium"], t["not_checked"]),
        "",
    ]
    head = ("HOST", "HOST KERNEL", "XFTRACE", "DOMAIN", "STATE", "ENROLLED", "TRACING",
            "GUEST KERNEL", "FINDINGS")
    rows = []
    for h in report["hosts"]:
        hc = (_text(h["host"], 40), _text(h["kernel"], 32), _text(h["xftrace"], 20))
        if not h["domains"]:
            rows.append(hc + ("-",) * 5 + ("NO ANSWER" if h["errors"] else "no domains",))
        for d in h["domains"]:
            rows.append(hc + (_text(d["domain"], 40), _text(d["state"], 8), _text(d["enrolled"], 8),
                              _text(d["tracing"], 8), _text(d["kernel"], 32), _found(d)))
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    problems = []
    for h in report["hosts"]:
        for e in h["errors"]:
            problems.append("%s: %s" % (_text(h["host"], 40), _text(e, 300)))
        for d in h["domains"]:
            if d["error"]:
                problems.append("%s: %s: %s" % (_text(h["host"], 40), _text(d["domain"], 40),
                                                _text(d["error"], 300)))
            for f in d["found"]:
                problems.append("%s: %s: %s %s: %s" % (
                    _text(h["host"], 40), _text(d["domain"], 40), _text(f.get("severity")),
                    _text(f.get("kind")), _text(f.get("detail"), 300)))
    if problems:
        out += ["", "Findings and problems:"] + ["  " + p for p in problems]
    return "\n".join(out) + "\n"


class FilterModule:
    def filters(self):
        return {"xftrace_fleet": xftrace_fleet, "xftrace_fleet_table": xftrace_fleet_table}
