"""``foldwise-visdom``: the live-view server, offline, on loopback unless told otherwise.

Starts visdom 0.2.4's own tornado application without its start-up
downloader (``assets`` installed the files it would fetch), keeps
saved environments under the project, and refuses to listen beyond
loopback without a login. Also installs the assets and replays event logs.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import secrets
import sys
from pathlib import Path

from foldwise.live.assets import install_assets, missing_assets
from foldwise.live.settings import (
    DEFAULT_ENV_PATH,
    DEFAULT_HOST,
    DEFAULT_PORT,
    HOST_ENV,
    PASSWORD_ENV,
    PORT_ENV,
    USER_ENV,
    server_url,
)
from foldwise.live.visdom_monitor import Sender


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: addresses nobody else can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def credentials(host: str) -> dict[str, str] | None:
    """visdom's login record from VISDOM_USERNAME/VISDOM_PASSWORD; required off loopback.

    A server reachable from the network without a login would let anyone
    read and edit the live view, so that is an error, not a default.
    """
    user, password = os.environ.get(USER_ENV, ""), os.environ.get(PASSWORD_ENV, "")
    if bool(user) != bool(password):
        raise ValueError(f"set both {USER_ENV} and {PASSWORD_ENV} (only one is set)")
    if not user:
        if is_loopback(host):
            return None
        raise ValueError(f"--host {host} makes the live view reachable from the network: set {USER_ENV} and "
                         f"{PASSWORD_ENV} to require a login, or keep the default host {DEFAULT_HOST}")
    from visdom.utils.server_utils import hash_password

    # visdom compares against sha256(sha256(password)): the client sends sha256(password).
    return {"username": user, "password": hash_password(hash_password(password))}


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, env_path: Path = DEFAULT_ENV_PATH,
          print_func=print) -> None:
    """Run the server until interrupted. Raises before listening when assets or a login are missing."""
    login = credentials(host)
    missing = missing_assets()
    if missing:
        raise FileNotFoundError(f"visdom's page assets are not installed ({len(missing)} missing, e.g. "
                                f"{missing[0]}); run `foldwise-visdom install-assets` (the set-up does) while "
                                "the npm registry is reachable")
    env_path = Path(env_path).resolve()
    env_path.mkdir(parents=True, exist_ok=True)
    from tornado import ioloop
    from visdom.server import app as visdom_app

    if login is not None:
        # visdom reads its cookie secret from ~/.visdom/COOKIE_SECRET; keep it with the project's envs.
        secret = env_path / "COOKIE_SECRET"
        if not secret.exists():
            secret.write_text(secrets.token_hex(32))
            secret.chmod(0o600)
        visdom_app.DEFAULT_ENV_PATH = str(env_path) + os.sep
    application = visdom_app.Application(port=port, env_path=str(env_path) + os.sep, user_credential=login)
    application.listen(port, address=host, max_buffer_size=1024**3)
    print_func(f"visdom live view: http://{host}:{port} (environments saved in {env_path}"
               f"{', login required' if login else ''}); Ctrl-C stops it")
    ioloop.IOLoop.current().start()


def replay(log: Path, server: str) -> int:
    """Send a monitor's event log to a running server; returns the number of events sent."""
    return Sender(server_url(server) or server).replay(Path(log))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="foldwise-visdom",
                                     description="The live view: a visdom server that works offline.")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("serve", help="start the server (the default)")
    for p, top in ((parser, True), (run, False)):
        # given after `serve`, an option must not reset one given before it
        default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
        p.add_argument("--host", default=default(os.environ.get(HOST_ENV, DEFAULT_HOST)),
                       help=f"address to listen on (env {HOST_ENV}; default {DEFAULT_HOST}; "
                            f"anything else needs {USER_ENV}/{PASSWORD_ENV})")
        p.add_argument("--port", type=int, default=default(int(os.environ.get(PORT_ENV, DEFAULT_PORT))),
                       help=f"port (env {PORT_ENV}; default {DEFAULT_PORT})")
        p.add_argument("--env-path", type=Path, default=default(DEFAULT_ENV_PATH),
                       help=f"where saved environments live (default {DEFAULT_ENV_PATH})")
    sub.add_parser("install-assets", help="install the page's scripts and fonts from the npm registry")
    again = sub.add_parser("replay", help="send an event log (.foldwise/visdom/logs/*.jsonl) to a server")
    again.add_argument("log", type=Path)
    again.add_argument("--server", default=f"http://{DEFAULT_HOST}:{DEFAULT_PORT}")
    args = parser.parse_args(argv)
    try:
        if args.command == "install-assets":
            written = install_assets()
            print(f"visdom assets: {written} files installed" if written else "visdom assets: all present")
        elif args.command == "replay":
            print(f"replayed {replay(args.log, args.server)} events from {args.log} into {args.server}")
        else:
            logging.getLogger().setLevel(logging.WARNING)  # visdom logs every request at INFO
            serve(args.host, args.port, args.env_path)
    except KeyboardInterrupt:
        return 0
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
