"""Remote execution: what a server does with a job (`execution`), and the client that sends
jobs to a server."""
