# No packages of our own: this tree only carries defconfigs and the kernel fragment.
