"""The mail server: transport, policy, authentication, storage."""
