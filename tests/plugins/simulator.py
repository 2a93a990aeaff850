"""pytest fixtures that run the CloudAgent simulator as a real process on loopback."""
