#!/usr/bin/env python3
"""Put the runbook's own keepalived track script into a keepalived.conf that hakube rendered.

Used by bench/drill-compare.sh for its seed run. hakube's two track scripts (chk_haproxy,
chk_apiserver) are replaced by the runbook's chk_haproxy, word for word, and the script security
lines go, as in the runbook (keepalived then runs the script as root).

Usage: runbook-keepalived.py /path/to/keepalived.conf
"""
import re
import sys

RUNBOOK = (
    "vrrp_script chk_haproxy {\n"
    '    script "/bin/kill -0 `cat /var/run/haproxy.pid`"\n'
    "    interval 2\n"
    "    weight 2\n"
    "    fall 3\n"
    "    rise 2\n"
    "}\n"
)


def patch(text: str) -> str:
    text, n = re.subn(r"(?:#[^\n]*\n)*vrrp_script chk_haproxy \{.*?\n\}\n", RUNBOOK, text, flags=re.S)
    text, m = re.subn(r"\n(?:#[^\n]*\n)*vrrp_script chk_apiserver \{.*?\n\}\n", "", text, flags=re.S)
    if n != 1 or m != 1 or "        chk_apiserver\n" not in text:
        sys.exit("runbook-keepalived.py: unexpected keepalived.conf (hakube's track scripts not found)")
    text = text.replace("        chk_apiserver\n", "")
    text = re.sub(r"    # Scripts run[^\n]*\n", "", text)
    text = re.sub(r"    (?:enable_script_security|script_user [^\n]*)\n", "", text)
    return text


if __name__ == "__main__":
    path = sys.argv[1]
    with open(path) as f:
        out = patch(f.read())
    with open(path, "w") as f:
        f.write(out)
