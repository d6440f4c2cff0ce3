"""The web service: an HTTP API and a browser page over trained run folders (`app.create_app`)."""
