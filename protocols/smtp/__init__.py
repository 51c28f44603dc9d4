"""The email door (ESMTP in, S/MIME) and outbound mail through a relay."""
