"""A POS terminal's sale, signed as the API wants it: balance inquiry, redemption, and the same
redemption sent again (what a POS does after a timeout: the stored answer comes back).

Against `make run` (its demo data and terminals), from the repository:

    .venv/bin/python examples/pos_redeem.py [--national-id ID] [--amount RIALS]

Only the standard library: this is what a POS vendor writes in any language.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

# the first household of the demo data: decile 3, two members, 10,000,000 rials a tranche
DEMO_HOUSEHOLD = "8376686526"


def sign(secret: str, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    """HMAC-SHA256 over METHOD, PATH_WITH_QUERY, TIMESTAMP, NONCE and sha256(body), one a line."""
    message = "\n".join([method, path, timestamp, nonce, hashlib.sha256(body).hexdigest()])
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def call(
    base: str, terminal: dict[str, Any], method: str, path: str, payload: Any = None
) -> tuple[int, dict[str, str], Any]:
    body = b"" if payload is None else json.dumps(payload).encode()
    timestamp = str(int(time.time()))
    nonce = secrets.token_hex(16)  # fresh for every request: a nonce is accepted once
    headers = {
        "X-Terminal-Id": str(terminal["terminal_id"]),
        "X-Timestamp": timestamp,
        "X-Nonce": nonce,
        "X-Signature": sign(terminal["secret"], method, path, timestamp, nonce, body),
    }
    if payload is not None:
        headers["Content-Type"] = "application/json"
    # the URL is the operator's own --url (http or https)
    request = urllib.request.Request(base + path, body or None, headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, dict(response.headers), json.load(response)
    except urllib.error.HTTPError as error:  # 4xx answers carry a JSON body too
        return error.code, dict(error.headers), json.load(error)


def secrets_file() -> Path:
    """The demo's terminals file: in COUPON_DATA_DIR, or the nearest .coupon/ from here up."""
    if os.environ.get("COUPON_DATA_DIR"):
        return Path(os.environ["COUPON_DATA_DIR"]) / "demo-terminals.json"
    for directory in (Path.cwd(), *Path.cwd().parents):
        if (directory / ".coupon").is_dir():
            return directory / ".coupon" / "demo-terminals.json"
    return Path(".coupon", "demo-terminals.json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    port = os.environ.get("COUPON_PORT", "8080")
    parser.add_argument("--url", default=f"http://127.0.0.1:{port}", help="the service")
    parser.add_argument("--secrets", type=Path, default=None, help="demo-terminals.json")
    parser.add_argument("--national-id", default=DEMO_HOUSEHOLD, help="the household's head")
    parser.add_argument("--amount", type=int, default=1_200_000, help="rials")
    args = parser.parse_args()

    path = args.secrets or secrets_file()
    try:
        terminal = json.loads(path.read_text())[0]
    except (OSError, ValueError, IndexError) as exc:
        print(f"cannot read a terminal from {path} ({exc}): run `make run` first", file=sys.stderr)
        return 2
    base = args.url.rstrip("/")
    print(f"terminal {terminal['terminal_id']} (from {path}) -> {base}")

    status, _, balance = call(base, terminal, "GET", f"/v1/households/{args.national_id}/balance")
    print(f"balance    {status} {json.dumps(balance)}")

    rice = args.amount * 2 // 3
    sale = {
        "request_id": "example-" + secrets.token_hex(6),  # the POS's own reference, unique
        "national_id": args.national_id,
        "amount": args.amount,
        "items": [
            {"category": "rice", "amount": rice},
            {"category": "dairy", "amount": args.amount - rice},
        ],
    }
    status, _, answer = call(base, terminal, "POST", "/v1/redemptions", sale)
    print(f"redemption {status} {json.dumps(answer)}")

    again, headers, replayed = call(base, terminal, "POST", "/v1/redemptions", sale)
    same = "the stored answer" if replayed == answer else "a different answer"
    print(
        f"resent     {again} {same}, Idempotent-Replayed: "
        f"{headers.get('Idempotent-Replayed', 'no')}"
    )
    return 0 if status == 201 else 1


if __name__ == "__main__":
    sys.exit(main())
