"""``twistd vss-node``: options and service of a VSS node."""

from twisted.application import service
from twisted.python import usage


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Run a VSS node: the RGM signalling core, the CDN module and its streaming server."
    optParameters = [
        ["config", "c", None, "Path of an INI config file (section [node])."],
    ]


def makeService(options):
    return service.MultiService()
