"""The `byok-relay` command: serve, init, migrate, reencrypt, doctor, mcp."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import secrets
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from byok_relay import __version__
from byok_relay.config import ENV_FILE, ConfigError, Settings, load_settings
from byok_relay.logs import configure_logging, log_event
from byok_relay.providers import ProviderConfigError
from byok_relay.storage import StorageUnavailable


class StartError(Exception):
    """The configuration is valid but the relay cannot start with it (one line, named)."""


def _database_problem(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"DATABASE_URL: cannot open the database: {exc.strerror}{where}"
    return f"DATABASE_URL: cannot open the database: {exc}"


def _fail(message: str) -> int:
    print(f"byok-relay: {message}", file=sys.stderr)
    return 2


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    for name in ("host", "port", "workers"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name.upper()] = value
    return load_settings(ENV_FILE, **overrides)


# --- serve -------------------------------------------------------------------------
async def _serve(settings: Settings, reuse_port: bool) -> None:
    from aiohttp import web

    from byok_relay.app import build_app
    from byok_relay.connections import HeadDeadline
    from byok_relay.drain import CLOSE_TIMEOUT_S, IN_FLIGHT

    app = build_app(settings)
    inflight = app[IN_FLIGHT]
    runner = web.AppRunner(
        app,
        handler_cancellation=True,  # client gone → handler cancelled → upstream closed
        access_log=None,
        shutdown_timeout=CLOSE_TIMEOUT_S,  # after our own SHUTDOWN_GRACE_S wait below
        keepalive_timeout=settings.KEEPALIVE_TIMEOUT_S,
    )
    from byok_relay.custody import HsmConfigError, HsmUnavailable

    try:
        await runner.setup()  # opens and migrates the database, connects the HSM
    except (HsmConfigError, HsmUnavailable) as exc:
        raise StartError(str(exc)) from None
    except (StorageUnavailable, OSError) as exc:
        raise StartError(_database_problem(exc)) from None
    assert runner.server is not None
    head_deadline = HeadDeadline(runner.server, settings.CLIENT_HEADER_TIMEOUT_S)
    head_deadline.start()
    site = web.TCPSite(runner, settings.HOST, settings.PORT, reuse_port=reuse_port, backlog=4096)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise StartError(
            f"PORT: cannot listen on {settings.HOST}:{settings.PORT}: {exc.strerror or exc}"
        ) from None
    log_event(
        "byok-relay listening",
        url=_browse_url(settings),  # what to open: the landing page links demo and docs
        host=settings.HOST,
        port=settings.PORT,
        pid=os.getpid(),
        version=__version__,
        database=settings.database_url.split(":", 1)[0],
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log_event("shutting down: no new connections; open streams may finish",
              grace_s=settings.SHUTDOWN_GRACE_S, open_requests=inflight.count)  # fmt: skip
    await site.stop()  # the listener closes now; open connections carry on
    await head_deadline.stop()
    server = runner.server
    if server is not None and hasattr(server, "pre_shutdown"):
        server.pre_shutdown()  # idle keep-alives close; busy ones after their response
    if not await inflight.wait_idle(settings.SHUTDOWN_GRACE_S):
        log_event("grace period over; closing the requests still open", 30,
                  open_requests=inflight.count)  # fmt: skip
    await runner.cleanup()
    log_event("stopped")


def _browse_url(settings: Settings) -> str:
    """The address to open in a browser (a wildcard listener is reachable on localhost)."""
    host = settings.HOST
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 (reading the setting, not binding)
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.PORT}/"


def _startup_notes(settings: Settings) -> None:
    for name, url in sorted(settings.provider_base_urls.items()):
        # Operators should see where keys go: a stale override is a silent leak.
        log_event("provider upstream overridden", variable=f"PROVIDER_{name}_BASE_URL", url=url)
    if "*" in settings.allowed_origins:
        log_event(
            "ALLOWED_ORIGINS is * : any website can call this relay with a user's token. "
            "Set ALLOWED_ORIGINS to your app's origin(s) in production.",
            30,
        )
    if settings.APP_SECRET is None:
        log_event("APP_SECRET is not set: POST /users is open to anyone.", 30)
    if settings.register_limit != settings.RATE_LIMIT_REGISTER:
        log_event(
            f"RATE_LIMIT_REGISTER is unset and the relay listens on loopback only: allowing "
            f"{settings.register_limit} registrations per address (the default is "
            f"{settings.RATE_LIMIT_REGISTER} once HOST is reachable from other machines)."
        )


def _run_worker(settings: Settings, reuse_port: bool) -> None:
    configure_logging(settings.LOG_LEVEL, settings.logger_levels, settings.log_as_text)
    _install_uvloop()
    asyncio.run(_serve(settings, reuse_port))


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    configure_logging(settings.LOG_LEVEL, settings.logger_levels, settings.log_as_text)
    _check_providers(settings)
    _startup_notes(settings)
    if settings.WORKERS == 1:
        _run_worker(settings, reuse_port=False)
        return 0
    # Migrate once here, then N processes share the port (SO_REUSEPORT).
    try:
        asyncio.run(_migrate(settings))
    except (StorageUnavailable, OSError) as exc:
        raise StartError(_database_problem(exc)) from None
    asyncio.run(_check_hsm(settings))  # a wrong PIN is one line here, not N tracebacks
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_run_worker, args=(settings, True), daemon=False)
        for _ in range(settings.WORKERS)
    ]
    for p in procs:
        p.start()

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = []
    for p in procs:
        p.join()
        codes.append(p.exitcode or 0)
    return max(codes, default=0)


async def _check_hsm(settings: Settings) -> None:
    from byok_relay.custody import HsmConfigError, HsmUnavailable, hsm_from_settings

    hsm = hsm_from_settings(settings)
    if hsm is None:
        return
    try:
        await hsm.connect()
        await hsm.round_trip()
    except (HsmConfigError, HsmUnavailable) as exc:
        raise StartError(str(exc)) from None
    finally:
        await hsm.close()


def _check_providers(settings: Settings) -> None:
    from byok_relay.providers import ProviderRegistry

    try:
        ProviderRegistry.load(settings.PROVIDERS_FILE, settings.provider_base_urls)
    except ProviderConfigError as exc:
        raise ConfigError(str(exc)) from None


# --- init ----------------------------------------------------------------------------
ENV_TEMPLATE = """\
# byok-relay configuration, written by `byok-relay init`. Keep this file private.
# Every variable and its default: see the README's configuration table.
ENCRYPTION_SECRET={encryption}
TOKEN_HMAC_SECRET={hmac}
# Restrict who may register users (clients then send Authorization: Bearer <APP_SECRET>):
# APP_SECRET={app}
# Restrict which websites may call the relay (comma list):
# ALLOWED_ORIGINS=https://your-app.example
# DATABASE_URL=sqlite:///./data/relay.db
# PORT=3000
"""


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.path)
    to_stdout = getattr(args, "stdout", False)
    if args.pkcs11:
        if to_stdout:
            return _fail("init: --stdout and --pkcs11 cannot be combined (--pkcs11 needs a file).")
        return _init_pkcs11(path)
    text = ENV_TEMPLATE.format(
        encryption=secrets.token_hex(32), hmac=secrets.token_hex(32), app=secrets.token_hex(24)
    )
    if to_stdout:
        # Nothing touches the disk: the caller redirects (a container without a host
        # Python: `docker run --rm IMAGE byok-relay init --stdout > .env`).
        sys.stdout.write(text)
        sys.stdout.flush()
        return 0
    if path.exists():
        return _fail(f"{path} already exists; not overwriting it (delete it or use --path).")
    try:
        # O_EXCL: never through a (dangling) symlink, never over a file created meanwhile.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _fail(f"{path} already exists (or is a symlink); not overwriting it.")
    except OSError as exc:
        return _fail(f"cannot create {path}: {exc.strerror}")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    print(f"wrote {path} (mode 0600) with fresh secrets; start with: byok-relay serve")
    return 0


def _init_pkcs11(path: Path) -> int:
    """Create the HSM's master key when absent (SPEC §11); writes the .env first if there
    is none, with the secrets that still stay local (token HMACs)."""
    from byok_relay.custody import HsmConfigError, HsmUnavailable, hsm_from_settings

    if not path.exists():
        code = cmd_init(argparse.Namespace(path=str(path), pkcs11=False))
        if code:
            return code
    settings = load_settings(str(path))
    hsm = hsm_from_settings(settings)
    if hsm is None:
        return _fail("init --pkcs11: set PKCS11_MODULE, PKCS11_TOKEN_LABEL and PKCS11_PIN "
                     "(or PKCS11_PIN_FILE), in the environment or in .env")  # fmt: skip

    async def create() -> bool:
        try:
            return await hsm.create_key()
        finally:
            await hsm.close()

    try:
        created = asyncio.run(create())
    except (HsmConfigError, HsmUnavailable) as exc:
        return _fail(f"init --pkcs11: {exc}")
    label, token = settings.PKCS11_KEY_LABEL, settings.PKCS11_TOKEN_LABEL
    if created:
        print(f"created the non-extractable AES-256 key {label!r} on token {token!r}")
    else:
        print(f"the key {label!r} already exists on token {token!r}; nothing to do")
    if settings.KEY_CUSTODY != "pkcs11":
        print("next: set KEY_CUSTODY=pkcs11, then `byok-relay reencrypt --to pkcs11` moves the "
              "keys already stored")  # fmt: skip
    return 0


# --- migrate -------------------------------------------------------------------------
async def _migrate(settings: Settings) -> list[int]:
    from byok_relay.storage import open_storage

    storage = open_storage(settings.database_url, pool_size=1)
    await storage.connect()
    try:
        return await storage.migrate()
    finally:
        await storage.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        applied = asyncio.run(_migrate(settings))
    except (StorageUnavailable, OSError) as exc:
        raise StartError(_database_problem(exc)) from None
    print(f"applied migrations: {applied}" if applied else "schema is up to date")
    return 0


# --- reencrypt -----------------------------------------------------------------------
def cmd_reencrypt(args: argparse.Namespace) -> int:
    from byok_relay.reencrypt import reencrypt_all

    settings = _settings(args)
    configure_logging(settings.LOG_LEVEL, settings.logger_levels, settings.log_as_text)
    from byok_relay.custody import CustodyUnavailable, HsmConfigError, HsmUnavailable

    if args.to == "pkcs11" and (settings.PKCS11_MODULE is None or not settings.PKCS11_TOKEN_LABEL):
        raise StartError("reencrypt --to pkcs11: set PKCS11_MODULE, PKCS11_TOKEN_LABEL and "
                         "PKCS11_PIN (or PKCS11_PIN_FILE); see docs/key-custody.md")  # fmt: skip
    try:
        result = asyncio.run(reencrypt_all(settings, args.batch_size, args.to))
    except (HsmConfigError, HsmUnavailable, CustodyUnavailable) as exc:
        raise StartError(f"reencrypt: {exc}") from None
    print(
        f"re-encrypted {result.rewritten} key(s); {result.remaining} left under older secrets; "
        f"{result.unreadable} unreadable"
    )
    if result.stopped:
        print(f"stopped early: {result.stopped}; run it again when the HSM answers")
    elif result.remaining and not result.unreadable:
        # Rows written meanwhile under an old secret (an instance not yet restarted).
        print("some keys were written under an older secret during the run: run it again")
    return 0 if result.remaining == 0 else 1


# --- doctor --------------------------------------------------------------------------
def cmd_doctor(args: argparse.Namespace) -> int:
    from byok_relay.doctor import run_doctor

    return asyncio.run(run_doctor())


# --- mcp -----------------------------------------------------------------------------
def cmd_mcp(args: argparse.Namespace) -> int:
    try:
        from byok_relay.mcp_server import serve_stdio
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "mcp":
            raise
        raise StartError("byok-relay mcp needs the MCP Python SDK (mcp>=2.3): "
                         "pip install 'byok-relay[mcp]'") from None  # fmt: skip
    return serve_stdio()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="byok-relay", description="Relay AI requests with each user's own provider key."
    )
    parser.add_argument("--version", action="version", version=f"byok-relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the relay",
        description="Run the relay: the HTTP API, the relay routes, the demo and the docs. "
        "Settings come from the environment and .env (see the README's configuration table).",
    )
    serve.add_argument("--host", help="interface (default HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default PORT or 3000)")
    serve.add_argument("--workers", type=int, help="worker processes (default WORKERS or 1)")
    serve.set_defaults(func=cmd_serve)

    init = sub.add_parser(
        "init",
        help="write a .env with fresh secrets (mode 0600)",
        description="Write a .env with fresh ENCRYPTION_SECRET and TOKEN_HMAC_SECRET (mode "
        "0600); never overwrites. Back the file up apart from the database (docs/backup.md).",
    )
    init.add_argument("--path", default=ENV_FILE, help="where to write (default .env)")
    init.add_argument("--pkcs11", action="store_true",
                      help="also create the HSM's master key (PKCS11_*) when absent")  # fmt: skip
    init.add_argument("--stdout", action="store_true",
                      help="print the .env to stdout instead of writing a file (for "
                      "`docker run --rm IMAGE byok-relay init --stdout > .env`)")  # fmt: skip
    init.set_defaults(func=cmd_init)

    migrate = sub.add_parser(
        "migrate",
        help="apply database migrations",
        description="Apply the pending database migrations and exit (serve also does it at "
        "start; run it alone before a rolling upgrade of several instances).",
    )
    migrate.set_defaults(func=cmd_migrate)

    reenc = sub.add_parser(
        "reencrypt",
        help="rewrite every stored key under the current secret, or move keys into or out "
        "of HSM custody (--to)",
        description="Rewrite every stored key under the current ENCRYPTION_SECRET (after "
        "changing it, with the old one in ENCRYPTION_SECRET_PREVIOUS), or move every key into "
        "or out of HSM custody (--to). Resumable; exit 1 while keys remain under old secrets.",
    )
    reenc.add_argument("--batch-size", type=int, default=200,
                       help="keys rewritten per database transaction (default 200)")  # fmt: skip
    reenc.add_argument("--to", choices=("local", "pkcs11"), default=None,
                       help="the custody to move every key to (default KEY_CUSTODY)")  # fmt: skip
    reenc.set_defaults(func=cmd_reencrypt)

    doctor = sub.add_parser(
        "doctor",
        help="check the configuration and say how to fix it",
        description="Check the configuration, the database, Redis, the HSM and the identity "
        "providers; print what is wrong and how to fix it. Exit 0 when all is well.",
    )
    doctor.set_defaults(func=cmd_doctor)

    mcp = sub.add_parser(
        "mcp",
        help="run an MCP server over stdio for Claude Desktop, Claude Code, Cursor, ...",
        description="Speak the Model Context Protocol on stdin/stdout with tools that call a "
        "relay: health, register, store_key, list_keys, delete_key, chat, request, usage. "
        "Configured by RELAY_URL and RELAY_TOKEN (optional: RELAY_TOKEN_FILE, RELAY_APP_ID, "
        "RELAY_APP_SECRET); logs go to stderr. Needs pip install 'byok-relay[mcp]'; see "
        "docs/integrations.md.",
    )
    mcp.set_defaults(func=cmd_mcp)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        return _fail(f"invalid configuration: {exc}")
    except StartError as exc:
        return _fail(f"cannot start: {exc}")
    except KeyboardInterrupt:
        return 130
