"""Hosts one engine in its own process: ``python -m pytest_vibeserve.worker READ_FD WRITE_FD``.

The parent (``runner.EngineProcess``) starts this with cwd = the engine directory, a scrubbed
environment and stdout/stderr sent to a log file. It sends ``init``, then ``add``/``counters``/
``shutdown`` commands; the worker steps the engine whenever it has work and sends every event batch
back at once, so the parent timestamps tokens as they arrive. The worker takes no timestamps for
the parent. Between ``profile_start`` and ``profile_stop`` the engine's calls run under a profiler
(``pytest_vibeserve.profiling``) whose summary goes back as plain JSON.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from pytest_vibeserve.channel import Channel, ChannelClosed
from pytest_vibeserve.contract import (
    FACTORY_NAME,
    AudioChunk,
    EngineSpec,
    Event,
    ImageRequest,
    Request,
)


def load_engine(engine_dir: Path, spec: EngineSpec) -> Any:
    engine_file = engine_dir / "engine.py"
    if not engine_file.is_file():
        raise FileNotFoundError(
            f"{engine_file} does not exist: an engine directory needs engine.py defining "
            f"{FACTORY_NAME}(spec)"
        )
    sys.path.insert(0, str(engine_dir))
    module_spec = importlib.util.spec_from_file_location("engine", engine_file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules["engine"] = module
    module_spec.loader.exec_module(module)
    factory = getattr(module, FACTORY_NAME, None)
    if factory is None:
        raise AttributeError(f"{engine_file} defines no {FACTORY_NAME}(spec) factory")
    engine = factory(spec)
    missing = [
        name
        for name in ("step", "has_unfinished_requests", "counters")
        if not callable(getattr(engine, name, None))
    ]
    adders = ("add_request", "add_audio", "add_image")
    if not any(callable(getattr(engine, name, None)) for name in adders):
        missing.append("add_request (text), add_audio (audio streams) or add_image (images)")
    if missing:
        raise TypeError(f"the engine from {FACTORY_NAME}() lacks method(s): {', '.join(missing)}")
    return engine


def serve(channel: Channel, engine_dir: Path) -> int:
    phase = "init"
    profiler = None
    try:
        init = channel.receive(timeout=None)[0]
        engine = load_engine(engine_dir, EngineSpec.from_dict(init["spec"]))
        capabilities = sorted(str(c) for c in getattr(engine, "capabilities", ()) or ())
        channel.send({"type": "ready", "capabilities": capabilities})
        phase = "serve"
        while True:
            busy = engine.has_unfinished_requests()
            for command in channel.receive(timeout=0 if busy else None):
                op = command["op"]
                if op == "add":
                    with profiler.engine_call() if profiler is not None else nullcontext():
                        engine.add_request(Request.from_dict(command["request"]))
                elif op == "audio":
                    add_audio = getattr(engine, "add_audio", None)
                    if not callable(add_audio):
                        raise TypeError(
                            "the engine has no add_audio(chunk) method; an engine serving "
                            "audio streams must define it (see pytest_vibeserve/contract.py)"
                        )
                    with profiler.engine_call() if profiler is not None else nullcontext():
                        add_audio(AudioChunk.from_dict(command["chunk"]))
                elif op == "image":
                    add_image = getattr(engine, "add_image", None)
                    if not callable(add_image):
                        raise TypeError(
                            "the engine has no add_image(request) method; an engine serving "
                            "images must define it (see pytest_vibeserve/contract.py)"
                        )
                    with profiler.engine_call() if profiler is not None else nullcontext():
                        add_image(ImageRequest.from_dict(command["request"]))
                elif op == "counters":
                    channel.send({"type": "counters", "counters": dict(engine.counters())})
                elif op == "shutdown":
                    return 0
                elif op == "profile_start":
                    from pytest_vibeserve.profiling import StepProfiler

                    profiler = StepProfiler(
                        command.get("tool", "auto"),
                        vocab_size=command.get("vocab_size"),
                        top=int(command.get("top", 15)),
                        counters=dict(engine.counters()),
                    )
                    channel.send({"type": "profile_started", "tool": profiler.tool})
                elif op == "profile_stop":
                    if profiler is None:
                        raise ValueError("profile_stop without profile_start")
                    summary = profiler.stop(dict(engine.counters()))
                    profiler = None
                    channel.send({"type": "profile", "profile": summary})
                else:
                    raise ValueError(f"unknown command {op!r}")
            if engine.has_unfinished_requests():
                with profiler.engine_call() if profiler is not None else nullcontext():
                    events: list[Event] = engine.step()
                if events:
                    channel.send({"type": "events", "events": [e.to_dict() for e in events]})
    except ChannelClosed:
        return 0
    except BaseException as error:  # noqa: BLE001 - every failure goes back to the parent
        message = {"type": "error", "phase": phase, "error": repr(error)}
        message["traceback"] = traceback.format_exc()
        try:
            channel.send(message)
        except OSError:
            pass
        traceback.print_exc()
        return 1


def main(argv: list[str]) -> int:
    read_fd, write_fd = int(argv[0]), int(argv[1])
    return serve(Channel(read_fd, write_fd), Path.cwd())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
