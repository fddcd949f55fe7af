"""Sans-I/O SMTP server protocol."""
