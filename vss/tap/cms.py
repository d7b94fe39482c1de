"""``twistd vss-cms``: options and service of the central platform (MMS, CMS, MDP)."""

from twisted.application import service
from twisted.python import usage


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Run the central platform: MMS admin API, CMS database and node links, MDP."
    optParameters = [
        ["config", "c", None, "Path of an INI config file (section [cms])."],
    ]


def makeService(options):
    return service.MultiService()
