// webhooks.mjs -- a webhook endpoint that verifies batchd's deliveries with the official
// openai npm package (pinned in package.json), client.webhooks.unwrap(body, headers,
// secret), exactly as a receiver of OpenAI's own webhooks does. Run by test/it_webhooks.c:
// PORT (to listen on, 127.0.0.1), WEBHOOK_SECRET (whsec_...) and EXPECT (comma list of
// event types) in the environment. Prints "verified <type> <data.id>" per verified event,
// answers 200 to those and 400 to a delivery unwrap refuses (printed as "refused ..."); exits
// 0 once every EXPECTed type was verified, 1 after 60 s.  SPDX-License-Identifier: MIT
import OpenAI from 'openai';
import http from 'node:http';
import { webcrypto } from 'node:crypto';

// unwrap uses WebCrypto through the global crypto, which Node 18 (Debian 12's) does not
// define by default; Node 20 does.
globalThis.crypto ??= webcrypto;

const secret = process.env.WEBHOOK_SECRET;
const want = new Set(process.env.EXPECT.split(','));
// The API key is never used: unwrap makes no request.
const client = new OpenAI({ apiKey: 'unused', webhookSecret: secret });

const timer = setTimeout(() => {
  console.error(`timed out waiting for: ${[...want].join(', ')}`);
  process.exit(1);
}, 60000);

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', async () => {
    const body = Buffer.concat(chunks).toString('utf8');
    try {
      const event = await client.webhooks.unwrap(body, req.headers, secret);
      console.log(`verified ${event.type} ${event.data.id}`);
      res.writeHead(200).end();
      want.delete(event.type);
      if (want.size === 0) {
        clearTimeout(timer);
        server.close();
      }
    } catch (e) {
      console.log(`refused ${e.name}: ${e.message}`);
      res.writeHead(400).end();
    }
  });
});
server.listen(Number(process.env.PORT), '127.0.0.1');
