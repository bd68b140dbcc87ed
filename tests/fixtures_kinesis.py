"""Fixtures for the Kinesis and DynamoDB emulators (filled in by the emulator infrastructure work)."""
