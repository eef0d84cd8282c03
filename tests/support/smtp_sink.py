"""A real SMTP server for the notification tests (aiosmtpd): listens on 127.0.0.1:PORT,
prints every message it accepts as one JSON line, and stops when its stdin closes."""
import email
import email.policy
import json
import sys

from aiosmtpd.controller import Controller


class Print:
    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        print(json.dumps({
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "subject": str(message["subject"]),
            "header_from": str(message["from"]),
            "body": message.get_content(),
        }), flush=True)
        return "250 Message accepted"


controller = Controller(Print(), hostname="127.0.0.1", port=int(sys.argv[1]))
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()
