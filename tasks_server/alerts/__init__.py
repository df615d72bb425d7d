"""Alerts: rules that watch outcomes, incidents that keep them from storming, messages,
and the channels that deliver them (e-mail over SMTP, webhooks as ordinary tasks)."""
