"""Project scripts: start the local stack and its real components, generate SDK traffic."""
