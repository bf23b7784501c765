"""An HL7 receiver the project did not write: python-hl7's asyncio MLLP server, in a thread.

``answer`` decides, per received message (parsed by python-hl7), what goes back: a
python-hl7 message (its own ``create_ack``), or None to close without answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator

import pytest

hl7 = pytest.importorskip("hl7", reason="python-hl7 (the dev extra) is not installed")
mllp = pytest.importorskip("hl7.mllp")

Answer = Callable[["hl7.Message"], "hl7.Message | None"]


def accept(message: hl7.Message) -> hl7.Message:
    return message.create_ack("AA")


class Receiver:
    def __init__(self, answer: Answer, tls: ssl.SSLContext | None) -> None:
        self.answer = answer
        self.tls = tls
        self.received: list[hl7.Message] = []
        self.port = _free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._server = await mllp.start_hl7_server(
            self._on_connection, host="127.0.0.1", port=self.port, encoding="utf-8", ssl=self.tls
        )

    async def _on_connection(self, reader, writer) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                self.received.append(message)
                reply = self.answer(message)
                if reply is None:
                    break
                writer.writemessage(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> Receiver:
        self._thread.start()
        assert self._ready.wait(10), "python-hl7's MLLP server did not start"
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _stop(self) -> None:
        self._server.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


@contextlib.contextmanager
def hl7_receiver(answer: Answer = accept, tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    with Receiver(answer, tls) as receiver:
        yield receiver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
