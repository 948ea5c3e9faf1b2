"""Model code that a device worker runs: the Runner interface, the registry, simulated runners."""
