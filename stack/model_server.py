"""``python -m stack.model_server``: llama.cpp's OpenAI-compatible server, in this process.

``xllamacpp.Server`` runs llama.cpp's HTTP server on its own threads; this process holds
it until SIGTERM or SIGINT. :class:`stack.model.EmbeddedModel` starts and stops it.
Exit codes: 0 after a signal, 2 for bad arguments, 3 when the CPU cannot run it.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from stack.cpu import missing_cpu_flags, unsupported_cpu_message
from stack.model import DEFAULT_MODEL, EmbeddedModelError, default_threads, resolve_model


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: model, address, slots, context, reply cap, threads."""
    parser = argparse.ArgumentParser(prog="python -m stack.model_server")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="a model name (stack.model.MODELS) or a GGUF path"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--parallel", type=int, default=4, help="request slots")
    parser.add_argument("--ctx-size", type=int, default=8192, help="context tokens, all slots")
    parser.add_argument("--n-predict", type=int, default=512, help="default reply cap (tokens)")
    parser.add_argument(
        "--threads", type=int, default=None, help="generation threads (default: cores less one)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit code."""
    args = parse_args(argv)
    missing = missing_cpu_flags()
    if missing:
        print(f"model server: {unsupported_cpu_message(missing)}", file=sys.stderr)
        return 3
    try:
        alias, path = resolve_model(args.model)
    except EmbeddedModelError as e:
        print(f"model server: {e}", file=sys.stderr)
        return 2
    # Imported only now: the extension must not be loaded on a CPU that cannot run it.
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.model_alias = {alias}
    params.hostnames = [args.host]
    params.port = args.port
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx_size
    params.n_predict = args.n_predict
    threads = args.threads or default_threads()
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.use_jinja = True  # the GGUF's own chat template
    params.ui = False
    params.offline = True  # never reach for a model hub
    # The server's threads inherit this mask, so the signals reach sigwait below.
    signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    server = xllamacpp.Server(params)
    print(f"model server: {alias} from {path} listening on {server.listening_address}", flush=True)
    received = signal.sigwait(signals)
    print(f"model server: {signal.Signals(received).name}, stopping", flush=True)
    del server  # its destructor stops the HTTP server and joins its threads
    return 0


if __name__ == "__main__":
    sys.exit(main())
