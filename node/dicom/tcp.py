"""Socket options of the node's associations."""

from __future__ import annotations

import socket

from pynetdicom import evt


def no_delay(event: evt.Event) -> None:
    """``EVT_CONN_OPEN`` handler: turn Nagle's algorithm off on the association's socket.

    A DIMSE exchange is a few small writes answered by small writes. With Nagle on, a small
    write waits until the peer acknowledges the previous one, and peers delay their ACKs by up to
    40 ms: every C-STORE then costs tens of milliseconds of waiting, whatever its size.
    """
    connection = event.assoc.dul.socket
    if connection is not None and connection.socket is not None:
        connection.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
