"""``mammotriage site accounts list|add|password|disable|enable|require DIR``: the site's
reader accounts (:mod:`mammotriage.store.pg.accounts`), on the site server (registered
by one line in :mod:`mammotriage.net.site`).

A new account's password is generated and printed once, or read from ``--password-file``
(a file only its owner can read; never from the command line, where ``ps`` shows it).
"""

from __future__ import annotations

import argparse
import json
import stat
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_accounts_command", "cmd_accounts"]


def add_accounts_command(sub: Any) -> None:
    q = sub.add_parser(
        "accounts", help="readers' site accounts: each reader signs in with their own password",
        description="Site accounts: a reader signs in at any workstation with their own password (a "
                    "database role of their own), and the site store accepts their corrections only under "
                    "their sign-in. 'require on' refuses corrections made without one.")
    asub = q.add_subparsers(dest="accounts_command", required=True)
    r = asub.add_parser("list", help="the readers with an account, and whether accounts are required")
    r.add_argument("folder", type=Path)
    r.add_argument("--json", action="store_true")
    for name, text in (("add", "a reader's account (the password is generated unless --password-file)"),
                       ("password", "a new password for a reader")):
        r = asub.add_parser(name, help=text)
        r.add_argument("folder", type=Path)
        r.add_argument("reader", help="the reader's name, as they sign in")
        r.add_argument("--password-file", type=Path, metavar="FILE",
                       help="read the password from FILE (mode 0600; default: generate one and print it)")
        r.add_argument("--who", default="site admin", help="who does it (recorded)")
    for name in ("disable", "enable"):
        r = asub.add_parser(name, help=f"{name} a reader's account")
        r.add_argument("folder", type=Path)
        r.add_argument("reader")
        r.add_argument("--who", default="site admin")
    r = asub.add_parser("require", help="refuse corrections made without a site sign-in (on) or not (off)")
    r.add_argument("folder", type=Path)
    r.add_argument("state", choices=("on", "off"))
    r.add_argument("--who", default="site admin")
    q.set_defaults(func=cmd_accounts)


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    from mammotriage.store.pg.accounts import AccountError, new_password

    if args.password_file is None:
        return new_password(), True
    path: Path = args.password_file
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise AccountError(f"{path}: cannot be read ({exc})") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AccountError(f"{path}: readable by others (mode {stat.S_IMODE(mode):04o}); chmod 600 {path}")
    return text, False


def cmd_accounts(args: argparse.Namespace) -> int:
    from mammotriage.net.site import SiteError, load_site
    from mammotriage.store.pg.accounts import AccountError, SiteAccounts
    from mammotriage.store.pg.cluster import DATABASE, SUPERUSER, PgError

    name = f"site accounts {args.accounts_command}"
    try:
        cluster, _, _ = load_site(args.folder)
        with SiteAccounts(cluster.dsn("mt_admin"), cluster.dsn(SUPERUSER)) as accounts:
            command = args.accounts_command
            if command == "list":
                out = accounts.listing()
                if args.json:
                    print(json.dumps(out, indent=1))
                else:
                    print(f"site accounts {'required' if out['required'] else 'not required'}")
                    for r in out["readers"]:
                        print(f"  {r['reader']} ({'active' if r['active'] else 'disabled'}, added "
                              f"{r['added_at']} by {r['added_by']})")
            elif command in ("add", "password"):
                password, generated = _password(args)
                if command == "add":
                    accounts.add(args.reader, password, args.who, DATABASE)
                    if cluster.tls is not None:  # a site made before accounts: its readers may connect
                        cluster.write_tls_hba()
                        cluster.reload()
                else:
                    accounts.password(args.reader, password)
                print(f"{args.reader}: {'account added' if command == 'add' else 'password changed'}")
                if generated:
                    print(f"  password (shown once, give it to {args.reader} only): {password}")
            elif command in ("disable", "enable"):
                accounts.set_enabled(args.reader, command == "enable", args.who)
                print(f"{args.reader}: account {command}d")
            else:
                accounts.require(args.state == "on", args.who)
                print(f"site accounts {'required' if args.state == 'on' else 'not required'}")
    except (SiteError, PgError, AccountError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the store refused or is away: said, exit 2
        print(f"{name}: the site store: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0
