// A real OpenID Connect provider for the dashboard's sign-in tests, built on the certified
// oidc-provider library: authorization code flow with PKCE (S256) only, RS256 ID tokens that
// carry the staff member's groups, and a login page that checks the configured passwords.
//
//   node provider.mjs CONFIG.json [PORT]      (PORT may also come from the environment; 0 or
//                                              none picks a free port)
//
// CONFIG.json: {"clients": [{client_id, client_secret, redirect_uris, post_logout_redirect_uris}],
//               "accounts": [{username, password, name, email, groups}]}
// It listens on 127.0.0.1 only, prints "listening on <issuer>" once, keeps everything in memory
// and exits on SIGTERM or SIGINT. stack/identity_provider.py runs it.

import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const MAX_FORM_BYTES = 16 * 1024;

const [configPath, portArgument = process.env.PORT ?? '0'] = process.argv.slice(2);
if (!configPath) {
  console.error('usage: node provider.mjs CONFIG.json [PORT]');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));
const accounts = new Map(config.accounts.map((account) => [account.username, account]));

// Codes, tokens, sessions and grants live only as long as the process: one test run.
const records = new Map(); // "Model:id" -> { payload, expiresAt }
const sessionIds = new Map(); // session uid -> session id
const grantKeys = new Map(); // grant id -> Set of the record keys of what it issued

// The storage interface oidc-provider expects. Its own in-memory adapter works as well, but
// warns on every start that it is for development only, which is exactly how it is used here.
class MemoryStore {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    records.set(key, { payload, expiresAt: Date.now() + expiresIn * 1000 });
    if (this.model === 'Session') {
      sessionIds.set(payload.uid, id);
    }
    if (payload.grantId) {
      grantKeys.set(payload.grantId, (grantKeys.get(payload.grantId) ?? new Set()).add(key));
    }
  }

  async find(id) {
    const record = records.get(this.key(id));
    return record && record.expiresAt > Date.now() ? record.payload : undefined;
  }

  async findByUid(uid) {
    const id = sessionIds.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const record = records.get(this.key(id));
    if (record) {
      record.payload.consumed = Math.floor(Date.now() / 1000);
    }
  }

  async destroy(id) {
    records.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const key of grantKeys.get(grantId) ?? []) {
      records.delete(key);
    }
    grantKeys.delete(grantId);
  }
}

function escapeHtml(text) {
  const entities = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
  return String(text).replace(/[&<>"']/g, (character) => entities[character]);
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>
<body>
<h1>${escapeHtml(title)}</h1>
${body}
</body>
</html>
`;
}

function loginPage(uid, clientId, username = '', error = '') {
  const alert = error ? `<p class="error" role="alert">${escapeHtml(error)}</p>\n` : '';
  return page('Sign in', `<p>to ${escapeHtml(clientId)}</p>
${alert}<form method="post" action="/interaction/${escapeHtml(uid)}">
<label>Username
<input name="username" autocomplete="username" value="${escapeHtml(username)}" required autofocus>
</label>
<label>Password
<input name="password" type="password" autocomplete="current-password" required>
</label>
<button type="submit">Sign in</button>
</form>`);
}

function send(res, status, html) {
  res.writeHead(status, {
    'Content-Type': 'text/html; charset=utf-8',
    'Cache-Control': 'no-store',
  });
  res.end(html);
}

async function readForm(req) {
  let body = '';
  req.setEncoding('utf8');
  for await (const chunk of req) {
    body += chunk;
    if (body.length > MAX_FORM_BYTES) {
      throw Object.assign(new Error('form too large'), { statusCode: 413 });
    }
  }
  return new URLSearchParams(body);
}

// Consent is granted for whatever the (configured, first-party) client asked for: the
// dashboard is the museum's own, and a consent page would only add a click to every test.
async function grantConsent(provider, interaction) {
  const { prompt: { details }, params, session } = interaction;
  const grant = interaction.grantId
    ? await provider.Grant.find(interaction.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (details.missingOIDCScope) {
    grant.addOIDCScope(details.missingOIDCScope.join(' '));
  }
  if (details.missingOIDCClaims) {
    grant.addOIDCClaims(details.missingOIDCClaims);
  }
  for (const [indicator, scopes] of Object.entries(details.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  return grant.save();
}

// The login page and its form, at the interaction's own URL: the library's interaction cookie
// is scoped to that path, and tells which sign-in the request belongs to.
async function interact(provider, req, res) {
  const interaction = await provider.interactionDetails(req, res);
  if (interaction.prompt.name === 'consent') {
    const grantId = await grantConsent(provider, interaction);
    await provider.interactionFinished(req, res, { consent: { grantId } });
    return;
  }
  const clientId = interaction.params.client_id;
  if (req.method !== 'POST') {
    send(res, 200, loginPage(interaction.uid, clientId));
    return;
  }
  const form = await readForm(req);
  const username = form.get('username') ?? '';
  const account = accounts.get(username);
  if (account === undefined || account.password !== form.get('password')) {
    // The same words for an unknown user and a wrong password: the page tells no one which
    // usernames exist.
    send(res, 401, loginPage(interaction.uid, clientId, username, 'Wrong username or password.'));
    return;
  }
  await provider.interactionFinished(
    req,
    res,
    { login: { accountId: username } },
    { mergeWithLastSubmission: false },
  );
}

function configure() {
  // A new key on every start: ID tokens are only ever checked against this process's JWKS.
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const signingKey = {
    ...privateKey.export({ format: 'jwk' }),
    kid: randomUUID(),
    alg: 'RS256',
    use: 'sig',
  };
  return {
    adapter: MemoryStore,
    clients: config.clients,
    clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
    responseTypes: ['code'],
    scopes: ['openid'],
    claims: {
      openid: ['sub'],
      profile: ['name', 'preferred_username'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    // Scope claims go into the ID token too (not only to userinfo): the dashboard reads the
    // staff member's name and groups from the ID token alone.
    conformIdTokenClaims: false,
    async findAccount(ctx, sub) {
      const account = accounts.get(sub);
      if (account === undefined) {
        return undefined;
      }
      return {
        accountId: sub,
        async claims() {
          return {
            sub,
            name: account.name,
            preferred_username: account.username,
            email: account.email,
            email_verified: true,
            groups: account.groups,
          };
        },
      };
    },
    pkce: { methods: ['S256'], required: () => true },
    jwks: { keys: [signingKey] },
    cookies: {
      keys: [randomBytes(32).toString('base64url')],
      // Lax, not the library's default None: browsers drop a SameSite=None cookie that is not
      // Secure, and this issuer is plain http on 127.0.0.1.
      long: { sameSite: 'lax' },
      short: { sameSite: 'lax' },
    },
    // Short, but long enough for a slow test.
    ttl: {
      AccessToken: 600,
      AuthorizationCode: 60,
      IdToken: 600,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: {
        enabled: true,
        async logoutSource(ctx, form) {
          ctx.body = page('Sign out', `${form}
<button type="submit" form="op.logoutForm" name="logout" value="yes" autofocus>Sign out</button>`);
        },
        async postLogoutSuccessSource(ctx) {
          ctx.body = page('Signed out', '<p>You have signed out.</p>');
        },
      },
    },
    // A token request from a browser is no use to a server-side client such as the dashboard.
    clientBasedCORS: () => false,
    async renderError(ctx, out) {
      ctx.type = 'html';
      const description = `${out.error}: ${out.error_description ?? ''}`;
      ctx.body = page('Sign-in failed', `<p role="alert">${escapeHtml(description)}</p>`);
    },
  };
}

// The provider for `issuer`, with every configured client checked now: the library checks a
// client only when it is first used, and a bad redirect URI should stop the start, not a
// test's sign-in.
async function startProvider(issuer) {
  try {
    const provider = new Provider(issuer, configure());
    await Promise.all(config.clients.map((client) => provider.Client.find(client.client_id)));
    return provider;
  } catch (error) {
    const description = error.error_description ?? error.message;
    console.error(`invalid configuration in ${configPath}: ${description}`);
    return process.exit(1);
  }
}

const server = createServer();
server.listen(Number(portArgument), '127.0.0.1', async () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = await startProvider(issuer);
  const handleProtocol = provider.callback();
  server.on('request', (req, res) => {
    if (!new URL(req.url, issuer).pathname.startsWith('/interaction/')) {
      handleProtocol(req, res);
      return;
    }
    interact(provider, req, res).catch((error) => {
      const status = error.statusCode ?? 500;
      if (status >= 500) {
        console.error(error);
      }
      const description = error.error_description ?? error.message;
      send(res, status, page('Sign-in failed', `<p role="alert">${escapeHtml(description)}</p>`));
    });
  });
  console.log(`listening on ${issuer}`);
});

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
