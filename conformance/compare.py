"""Compares Autobahn results of the `direct` and `wsgate` agents.

Every case that passes directly (OK, NON-STRICT, INFORMATIONAL) must pass through
wsgate too, with the same close behaviour. Prints a summary table and the differences;
exits 1 on any regression not listed in the known-regressions file (second argument):
lines `<case> <close code the client gets through wsgate>`, each a documented gap
(RELIABILITY.md). A listed case that starts passing, or fails differently, is reported.
"""
import collections
import json
import os
import sys

PASS = {"OK", "NON-STRICT", "INFORMATIONAL"}


def key(case):
    return [int(p) for p in case.split(".")]


def close_seen(base, result):
    """What the client was told: the close code and reason it received, if any."""
    try:
        with open(os.path.join(base, result["reportfile"])) as f:
            r = json.load(f)
    except (OSError, KeyError, ValueError):
        return "?"
    if r.get("remoteCloseCode") is None:
        return "no close frame"
    return f'{r["remoteCloseCode"]} "{r.get("remoteCloseReason") or ""}"'


def load_known(path):
    known = {}
    if path:
        with open(path) as f:
            for line in f:
                line = line.split("#")[0].strip()
                if line:
                    case, code = line.split()
                    known[case] = code
    return known


def main(path, known_path=None):
    known = load_known(known_path)
    base = os.path.dirname(path)
    with open(path) as f:
        index = json.load(f)
    direct, gate = index.get("direct"), index.get("wsgate")
    if not direct or not gate:
        # A run that tested nothing must fail, never pass as "no regressions".
        print(f"no results for {'direct' if not direct else 'wsgate'} in {path}")
        return 1
    counts = {a: collections.Counter() for a in ("direct", "wsgate")}
    for agent, results in (("direct", direct), ("wsgate", gate)):
        for r in results.values():
            counts[agent][r["behavior"]] += 1
    behaviors = sorted(set(counts["direct"]) | set(counts["wsgate"]))
    print(f"{'behavior':<15}{'direct':>8}{'wsgate':>8}")
    for b in behaviors:
        print(f"{b:<15}{counts['direct'][b]:>8}{counts['wsgate'][b]:>8}")
    print(f"{'total':<15}{sum(counts['direct'].values()):>8}{sum(counts['wsgate'].values()):>8}")
    regressions, differences = [], []
    for case in sorted(direct, key=key):
        d, g = direct[case], gate.get(case)
        if g is None:
            regressions.append((case, d["behavior"], "missing"))
            continue
        if d["behavior"] in PASS and (
            g["behavior"] not in PASS or g["behaviorClose"] not in PASS
        ):
            regressions.append((case, f'{d["behavior"]}/{d["behaviorClose"]}', f'{g["behavior"]}/{g["behaviorClose"]}, client got {close_seen(base, g)}'))
        elif (d["behavior"], d["behaviorClose"]) != (g["behavior"], g["behaviorClose"]):
            differences.append((case, f'{d["behavior"]}/{d["behaviorClose"]}', f'{g["behavior"]}/{g["behaviorClose"]}'))
    causes = collections.Counter(g.split("client got ")[-1] for _, _, g in regressions)
    if causes:
        print("\nregressions by what the client received through wsgate:")
        for cause, n in causes.most_common():
            print(f"  {n:>4}  {cause}")
    for title, rows in (("regressions (pass direct, not through wsgate)", regressions),
                        ("other differences", differences)):
        print(f"\n{title}: {len(rows)}")
        for case, d, g in rows:
            print(f"  {case:<10} direct {d:<28} wsgate {g}")
    unexpected = [
        r for r in regressions
        if not r[2].startswith("FAILED") or known.get(r[0]) != r[2].split("client got ")[-1].split()[0]
    ]
    fixed = sorted(set(known) & set(direct) - {r[0] for r in regressions}, key=key)
    if known:
        print(f"\nknown regressions (listed in {os.path.basename(known_path)}): {len(regressions) - len(unexpected)}")
        print(f"unexpected regressions: {len(unexpected)}")
        for case, d, g in unexpected:
            print(f"  {case:<10} direct {d:<28} wsgate {g}")
        if fixed:
            print(f"listed as known but now passing: {' '.join(fixed)}")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
