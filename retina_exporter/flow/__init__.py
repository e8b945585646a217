"""Flow records: the compact in-process form of a Hubble ``Flow`` and its conversion at the edges."""
