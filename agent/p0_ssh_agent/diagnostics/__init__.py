"""What doctor and status check on a host and report as findings."""
