from twisted.application.service import ServiceMaker

vssNode = ServiceMaker("vss-node", "vss.tap.node", "A VSS node: RGM, CDN module, streaming server.", "vss-node")
vssCms = ServiceMaker("vss-cms", "vss.tap.cms", "The central platform: MMS, CMS, MDP.", "vss-cms")
vssSs = ServiceMaker("vss-ss", "vss.tap.ss", "A streaming server worker of a VSS node.", "vss-ss")
