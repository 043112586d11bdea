"""``potluck demo``: a whole cluster on one machine, with emulated slow devices."""
