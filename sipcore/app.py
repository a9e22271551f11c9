"""Run the server for one stage: command line, configuration, start, signals, stop.

The stage's plug-ins (media backend, signalling engine) are built by the assembly module above
sipcore (``assembly``), which hands them in as ``Plugins``; run.py, run_refactored.py and
run_sippy.py call ``assembly.main`` with their literal stage (never inferred from a file name).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from sipcore import compiled, gc_policy
from sipcore.errors import ConfigError, MediaBackendError
from dataclasses import dataclass
from typing import Callable

from sipcore.stages import STAGES, stage_of

log = logging.getLogger(__name__)


ENV_HELP = """environment (original names and defaults):
  SERVER_IP            address to advertise (AUTO_DETECT = the local address), default AUTO_DETECT
  SERVER_PORT          SIP port, default 5060          ENABLE_TCP  1 = also SIP over TCP
  SERVER_PUBLIC_HOST/SERVER_PUBLIC_PORT  advertised host/port when different
  LOCAL_NETWORK_CIDR   default 192.168.0.0/16,10.0.0.0/8,172.16.0.0/12 (NAT detection)
  RTPPROXY_SOCKET      rtpproxy control socket spec (udp:H:P, udp6:[H]:P, unix:/path, tcp:H:P)
  RTPPROXY_UDP_HOST/RTPPROXY_UDP_PORT, RTPPROXY_TCP_HOST/RTPPROXY_TCP_PORT  (127.0.0.1:7722)
  RTPPROXY_NODES       several relays: spec=weight,spec=weight
  RTPPROXY_AUTO_START  1 = start ims-rtpproxy when nothing answers (default 1)
  RTPPROXY_ENGINE      relay it starts: rtpproxy (default, the embedded RTPProxy of rtp-io) or
                       rtpengine (Debian rtpengine-daemon, udp control socket only)
  RTP_PORT_MIN/RTP_PORT_MAX  media ports, default 20000-29999
  UDP_BIND_IP          address SIP listens on; default SERVER_IP when it is an address of
                       this host, else 0.0.0.0
  USERS_FILE, CDR_DIR, LOG_DIR, LOG_LEVEL, BLACKLIST_FILE, CONFIG_FILE
                       (a missing USERS_FILE is created empty: no users, no default passwords)
  LOCATION_STORE       where registrations are kept across restarts: sqlite:PATH (default
                       sqlite:location.sqlite next to USERS_FILE), redis://HOST:PORT/N (shared by
                       several servers), or memory
  AUTH_INVITE          1 = challenge INVITE/MESSAGE from our users with 407 (default: stage 0 no,
                       stages 1/2 yes)      AUTH_ALGORITHMS  default MD5 (MD5,SHA-256 also offers SHA-256)
  CDR_EXTENDED         1 = also CDR rows the original never wrote (failed REGISTER, refreshes,
                       calls/MESSAGEs the server refused) and ringing_time; default 0
  SIP_REALM, NONCE_TTL, MIN_EXPIRES, MAX_EXPIRES
  NAT_KEEPALIVE_INTERVAL, NAT_KEEPALIVE_METHOD (OPTIONS|CRLF), NAT_KEEPALIVE_FAILURES (stage 2)
  MML_HOST (127.0.0.1), MML_PORT (8888), MML_TOKEN, or MML_TOKEN_FILE (default config/mml.token,
                       read when it exists; scripts/setup.sh creates it, mode 0600)
  SIGNALLING           sipcore|sippy (stage 2)
  HANDOVER_CALL_MAX_SECONDS  a call handed over by a restart (RTPProxy as its own process) is
                       ended (BYE to both, CDR HANDOVER_TIMEOUT) this long after the restart (7200)
  HANDOVER_CHECK_INTERVAL  seconds between checks of such calls; one whose RTPProxy session is
                       gone (RTPProxy's own inactivity timeout) ends RELAY_TIMEOUT (15)
  EVENT_LOOP           asyncio (default) | uvloop (PyPI uvloop) | auto (uvloop when installed)
  IMS_COMPILED         0 = run sipcore's pure-Python modules even when the mypyc build
                       (scripts/build_compiled.py, run by setup.sh) is current; default 1
overload control (see MIGRATION.md "Capacity"):
  OVERLOAD_QUEUE_MS    a new INVITE/REGISTER/MESSAGE/SUBSCRIBE that waited longer than this in the
                       socket queue is answered 503 + Retry-After (default 200; 0 = off)
  OVERLOAD_MAX_PENDING the same once this many transactions await their final answer (5000; 0 = off)
  OVERLOAD_RETRY_AFTER seconds in the 503's Retry-After (5)
  GC_FULL_INTERVAL     seconds between full garbage collections, each logged (3600; 0 = never);
                       only young objects are collected automatically (sipcore/gc_policy.py)
edge policy (see MIGRATION.md "Edge policy"):
  CALLER_IDENTITY      1 = a From naming a local user must authenticate as that user (default:
                       on in stages 1 and 2, off in stage 0; AUTH_INVITE=0 alone turns it off)
  FOREIGN_CALLERS      challenge (default) | reject | allow: callers from other domains
  OUTBOUND_ROUTE       sip:IP[:PORT][;transport=udp|tcp]: where requests to other domains go
                       (authenticated local users only); unset = refused with 403
  LOCAL_DOMAINS        extra domains served here besides SIP_REALM and the server address
  RR_SECRET / RR_SECRET_FILE  route-token secret (default file rr_secret.key next to USERS_FILE,
                       created at the first start; keep it so calls survive restarts)
edge safety (see MIGRATION.md "Edge safety"):
  SERVER_HEADER        Server/User-Agent text we send, default "ims-migrate" (no stage, no version)
  TCP_MAX_CONNECTIONS  open SIP TCP connections in all (1000)   TCP_MAX_PER_SOURCE  per address (32)
  TCP_FIRST_MESSAGE_TIMEOUT  seconds a new TCP connection may stay without a valid SIP message (10)
  DNS_TIMEOUT          seconds for resolving a host name found in Via/Route/R-URI, off the loop (2)
  DNS_RESOLVE          0 = never resolve such names (the message is dropped with one log line)
  IMS_LOOP_STALL_MS    tests/diagnosis: log every event-loop callback that runs longer than this
"""


def parse_args(stage: int, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else f"stage{stage}",
        description=f"ims-migrate SIP server, {stage_of(stage).summary}.",
        epilog=ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check-config", action="store_true",
                        help="check what a start needs, then exit (1 if something fails): configuration, users "
                             "file, CDR/log directories, SIP and MML ports, MML token, media relay (answers or "
                             "can be auto-started)")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Plugins:
    """What the assembly module (above sipcore) provides for a stage."""
    build_media: Callable        # (stage, config) -> sipcore.media.MediaBackend
    build_server: Callable       # (stage, config) -> sipcore.server.SIPServer with its plug-ins
    check_signalling: Callable   # (stage, config) -> None, raises ConfigError naming SIGNALLING


async def serve(stage: int, config, plugins: Plugins) -> int:
    from sipcore.mml.http_api import start_mml_server
    log.info("event loop: %s (EVENT_LOOP=%s)", type(asyncio.get_running_loop()).__module__.split(".")[0],
             config.event_loop)
    log.info("sipcore: %s", compiled.STATUS)
    try:
        server = plugins.build_server(stage, config)
    except ConfigError as exc:          # e.g. a corrupt users.json or a bad SIGNALLING value
        print(f"configuration error: {exc.key}: {exc.message}", file=sys.stderr)
        return 2
    try:
        await server.start()
    except (MediaBackendError, ConfigError) as exc:   # ConfigError: e.g. the Sippy reactor cannot start
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        await server.stop()
        return 3
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        print(f"error: cannot listen on {config.bind_ip}:{config.server_port}: {exc}", file=sys.stderr)
        await server.stop()
        return 3
    gc_policy.freeze_startup()      # users, config, modules: never scanned by the collector again
    mml = await start_mml_server(server.management_context(), config.mml_host, config.mml_port,
                                 token=config.mml_token)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ims-migrate {stage_of(stage).summary} ready on {config.advertised_host}:{config.advertised_port}",
          flush=True)
    stopped = loop.create_task(stop.wait())
    assert server.fatal is not None
    await asyncio.wait([stopped, server.fatal], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    fatal = server.fatal.result() if server.fatal.done() else None
    log.info("shutting down (%s)", f"fatal: {fatal}" if fatal else "signal")
    await mml.close()
    await server.stop()
    if fatal:
        print(f"error: {fatal}", file=sys.stderr)
        return 4      # non-zero: pm2/systemd restart the process
    return 0


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (often 1024 -> 524288 under systemd/pm2),
    so a burst of TCP connections cannot starve the CDR writer and the media relay of descriptors.
    Returns (soft, hard) after the change."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1048576
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:
            log.warning("cannot raise RLIMIT_NOFILE from %d to %d: %s", soft, want, exc)
    return soft, hard


def loop_stall_threshold(environ) -> float | None:
    """IMS_LOOP_STALL_MS: log callbacks that block the loop longer than this (sipcore.loopwatch; tests use 100)."""
    raw = environ.get("IMS_LOOP_STALL_MS", "").strip()
    if not raw:
        return None
    try:
        ms = float(raw)
    except ValueError:
        raise ConfigError("IMS_LOOP_STALL_MS", f"not a number: {raw!r}") from None
    if not ms > 0:
        raise ConfigError("IMS_LOOP_STALL_MS", f"must be positive, got {raw!r}")
    return ms / 1000.0


async def _serve_watched(stage: int, config, plugins: Plugins, stall: float | None) -> int:
    if stall is not None:
        from sipcore import loopwatch
        loopwatch.install(stall)
        log.info("loop stall detector on: callbacks blocking the loop over %.0f ms are logged", stall * 1000)
    return await serve(stage, config, plugins)


def main(stage: int, argv: list[str] | None, plugins: Plugins) -> int:
    if stage not in STAGES:
        print(f"error: unknown stage {stage}", file=sys.stderr)
        return 2
    args = parse_args(stage, list(argv or []))
    from sipcore.config import Config
    from sipcore.logsetup import setup_logging
    try:
        config = Config.from_env(os.environ)
        plugins.check_signalling(stage, config)
        stall = loop_stall_threshold(os.environ)
    except ConfigError as exc:
        print(f"configuration error: {exc.key}: {exc.message}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_dir, background=True)
    if args.check_config:
        from sipcore.preflight import run_checks
        checks = asyncio.run(run_checks(stage, config, plugins.build_media))
        for check in checks:
            print(check.line())
        if all(c.ok for c in checks):
            print(f"configuration ok for {stage_of(stage).summary}")
            return 0
        print(f"configuration NOT ok for {stage_of(stage).summary}: fix the FAIL lines above", file=sys.stderr)
        return 1
    soft, hard = raise_nofile_limit()
    log.info("RLIMIT_NOFILE %d (hard %d)", soft, hard)
    gc_policy.apply()
    try:
        if config.event_loop == "uvloop":
            import uvloop
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(_serve_watched(stage, config, plugins, stall))
        return asyncio.run(_serve_watched(stage, config, plugins, stall))
    except KeyboardInterrupt:
        return 130
