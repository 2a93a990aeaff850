"""pytest fixtures that run the callback receiver as a real process on loopback."""
