"""The publisher side: task announcements, the lease book, and its durable store."""
