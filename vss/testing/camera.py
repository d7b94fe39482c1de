"""
An IP camera for tests: an RTSP server of our own asking for Digest credentials (not vss
tokens), fed H.264 by a publisher process (``vss.pu.media``), as a node pulls a real
camera by its ``source_url``.
"""

from twisted.internet import defer

from vss.protocols.messages import MediaStart
from vss.pu.media import PublisherFactory
from vss.rtsp.server import RTSPServerFactory
from vss.testing.platform import wait_until

PATH = "/live/cam/main"


class _AllowAll:
    """The camera's own server: Digest credentials are its whole check."""

    def check(self, token, path, method):
        return True, None


class _Pu:
    device_id = "cam"


class _Channel:
    index = 0


@defer.inlineCallbacks
def start_ip_camera(testcase, reactor, width=320, height=240, fps=25, user="admin",
                    password="cam-pass"):
    """Start the camera, stopped when ``testcase`` ends; fires with (its URL, credentials
    in it as an operator enters them, and its RTSPServerFactory) once it streams."""
    server = RTSPServerFactory(_AllowAll(), reactor=reactor, users={user: password},
                               realm="IP Camera")
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    testcase.addCleanup(server.close_all)
    url = f"rtsp://{user}:{password}@127.0.0.1:{port.getHost().port}{PATH}"
    publisher = PublisherFactory(reactor, width=width, height=height, fps=fps)
    testcase.addCleanup(publisher.stop_all)
    publisher.start(_Pu, _Channel, MediaStart(device_id="cam", channel=0, stream=0,
                                              publish_url=url, start_time=0))
    yield wait_until(reactor, lambda: PATH in server.sources, timeout=30,
                     what="the camera's stream")
    return url, server
