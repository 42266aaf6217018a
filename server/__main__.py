"""``python -m server`` starts the server; ``python -m server token …`` prints a test token;
``python -m server chat …`` is a terminal client."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
from datetime import timedelta

from aiohttp import web

from .app import COMPONENTS, authenticator, create_app, describe_mode, new_instance_id
from .config import ConfigError, Settings
from .domain.models import Role
from .observability import logs
from .terminal import COMMANDS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the server (the default)")
    token = commands.add_parser("token", help="print a signed JWT (needs JWT_SECRET)")
    token.add_argument("--sub", required=True, help="user id")
    token.add_argument("--tenant", default="default")
    token.add_argument("--role", default=Role.USER.value, choices=[r.value for r in Role])
    token.add_argument("--name")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    chat = commands.add_parser(
        "chat",
        help="a terminal client (type to send, /quit to leave)",
        description="A terminal client of namespace /chat: type a line to send it.",
        epilog="while chatting: "
        + "; ".join(f"{name}: {what}" for name, what in COMMANDS.items())
        + ". A line starting with // is sent with one slash.",
    )
    chat.add_argument("--url", default="http://127.0.0.1:8080", help="the server's base URL")
    chat.add_argument("--consultation", required=True, help="the consultation to join")
    chat.add_argument("--token", help="a JWT (JWT mode)")
    chat.add_argument("--user", help="the dev-auth identity to use (no JWT_SECRET)")
    knowledge = commands.add_parser(
        "knowledge",
        help="import or export a tenant's knowledge base (needs MONGODB_URL)",
        description="Import Markdown, JSON or JSON Lines files (a file or a folder) into a "
        "tenant's knowledge base, or export it (PATH.jsonl, or a folder of Markdown files). "
        "Importing again replaces articles by id (or by file path): never duplicates.",
    )
    knowledge.add_argument("action", choices=["import", "export"])
    knowledge.add_argument("path")
    knowledge.add_argument("--tenant", required=True)
    args = parser.parse_args(argv)
    if args.command == "chat":  # a client: no server settings involved
        from .terminal import chat as run_chat

        return run_chat(args.url, args.consultation, args.token, args.user)

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "token":
        return _print_token(settings, args)
    if args.command == "knowledge":
        from .knowledge_cli import run as run_knowledge

        return run_knowledge(settings, args.action, args.path, args.tenant)
    return _serve(settings)


def _serve(settings: Settings) -> int:
    if not settings.instance_id:  # one name for the logs, connection ids and status
        settings = settings.model_copy(update={"instance_id": new_instance_id()})
    assert settings.instance_id is not None
    logs.configure(settings.log_level, settings.log_format, settings.instance_id)
    log = logging.getLogger("server")
    for level, line in describe_mode(settings):
        log.log(level, line)
    try:
        # A start-up that cannot complete ends like a SIGTERM (a clean shutdown), then exit 1.
        app = create_app(settings, on_fatal=lambda: signal.raise_signal(signal.SIGTERM))
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    if settings.gc_tuning:
        tune_gc()
    log.info("listening on http://%s:%s (Socket.IO namespace /chat)", settings.host, settings.port)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=None,
        access_log=None,
        shutdown_timeout=3,  # clients were already disconnected by the drain
    )
    return 1 if app[COMPONENTS].fatal else 0


def tune_gc() -> None:
    """Keep latency tails flat: under load the default thresholds run a collection every 700
    allocations, and full collections walk every object loaded at start-up. Move start-up
    objects out of the collector's sight and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _print_token(settings: Settings, args: argparse.Namespace) -> int:
    try:
        print(
            authenticator(settings).issue(
                args.sub,
                tenant=args.tenant,
                role=Role(args.role),
                name=args.name,
                ttl=timedelta(seconds=args.ttl),
            )
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
