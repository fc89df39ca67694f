// Tiny static programs packed into the real node's local images (cellguard.devcluster.realnode):
// no registry is needed, the images are built on the machine from these and imported.
module cellguard.io/toolchain/images

go 1.26.0
