import socket

import pytest


def test_guard_refuses_non_loopback():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(ConnectionRefusedError):
        s.connect(("93.184.216.34", 80))
    s.close()


def test_guard_refuses_dns():
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("example.com", 80)
