"""
The daemons' command lines: ``usage.Options`` and ``makeService`` for
``twistd vss-node`` (``node``) and ``twistd vss-cms`` (``cms``), and the option checks
they share (``common``). The plugins in ``twisted/plugins/vss_plugins.py`` point here;
the services they build are ``vss.node.NodeService`` and ``vss.cms.daemon.CmsDaemon``.
"""
