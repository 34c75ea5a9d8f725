"""What causes invocations besides a direct call: cron schedules, jobs and chains."""
