// A real OpenID Connect provider for the tests (tests/test_auth_oidc.py, tests/test_console_oidc.py),
// built on oidc-provider.
//
//   node provider.mjs CONFIG.json
//
// CONFIG.json: {"port": 7455, "keys": {"keys": [private JWKs, each with a kid]}, "audience": "...",
//               "alg": "RS256", "clients": [{"client_id", "client_secret", "tenant", "roles", "groups"}],
//               "console_clients": [{"client_id", "redirect_uris"}],
//               "accounts": [{"id", "password", "name", "tenant", "roles", "groups"}]}
// The issuer is http://127.0.0.1:PORT.
// - "clients" use the client_credentials grant (no browser) and get JWT access tokens for the
//   audience, with the client's tenant, roles and groups as claims.
// - "console_clients" are public clients (no secret) of the authorization code flow with PKCE (S256,
//   required): a browser signs in as one of the "accounts" on this provider's own small login page
//   (name and password checked), then allows the client on a consent page; the access token is a
//   JWT for the audience with the account's tenant, roles and groups, the ID token carries the nonce.
//   Nothing on these pages is loaded from elsewhere (works offline).
// Rotating keys: start it again on the same port with another "keys" set (the issuer stays the same).
import { readFileSync } from 'node:fs';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const port = Number(config.port);
const issuer = `http://127.0.0.1:${port}`;
const audience = config.audience;
const byId = new Map(config.clients.map((client) => [client.client_id, client]));
const accounts = new Map((config.accounts || []).map((account) => [account.id, account]));

const claimsOf = (who) => ({ tenant: who.tenant, roles: who.roles || [], groups: who.groups || [] });

const provider = new Provider(issuer, {
  jwks: config.keys,
  cookies: { keys: ['cityos-test-provider-cookie-key'] },
  clients: [
    ...config.clients.map((client) => ({
      client_id: client.client_id,
      client_secret: client.client_secret,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: 'api',
    })),
    ...(config.console_clients || []).map((client) => ({
      client_id: client.client_id,
      grant_types: ['authorization_code'],
      redirect_uris: client.redirect_uris,
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
      scope: 'openid api',
    })),
  ],
  scopes: ['openid', 'api'],
  claims: { openid: ['sub'], profile: ['name'] },
  pkce: { required: () => true },
  async findAccount(ctx, id) {
    const account = accounts.get(id);
    if (!account) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, name: account.name || id }) };
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'api',
        audience,
        accessTokenTTL: 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: config.alg || 'RS256' } },
      }),
    },
  },
  extraTokenClaims(ctx, token) {
    if (token.accountId && accounts.has(token.accountId)) return claimsOf(accounts.get(token.accountId));
    const client = byId.get(token.clientId);
    if (!client) return undefined;
    return claimsOf(client);
  },
});
provider.proxy = false;

const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const page = (title, body) => `<!doctype html><html lang="en"><head><meta charset="utf-8">
<link rel="icon" href="data:,"><title>${escape(title)}</title></head><body><main><h1>${escape(title)}</h1>${body}</main></body></html>`;

async function formOf(req) {
  let text = '';
  for await (const chunk of req) {
    text += chunk;
    if (text.length > 10000) break;
  }
  return new URLSearchParams(text);
}

// the login and consent pages (/interaction/UID), in front of the provider's own routes
provider.use(async (ctx, next) => {
  const match = /^\/interaction\/([\w-]+)(\/(login|consent))?$/.exec(ctx.path);
  if (!match) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const { uid, prompt, params } = details;
  if (ctx.method === 'GET' && prompt.name === 'login') {
    ctx.type = 'html';
    ctx.body = page('Sign in to the test provider', `
<form method="post" action="/interaction/${uid}/login">
<label for="login">Account</label> <input id="login" name="login" autocomplete="username" required>
<label for="password">Password</label> <input id="password" name="password" type="password" required>
<button type="submit">Sign in</button></form>`);
    return undefined;
  }
  if (ctx.method === 'GET' && prompt.name === 'consent') {
    ctx.type = 'html';
    ctx.body = page('Allow access', `<p>${escape(params.client_id)} asks for: ${escape(params.scope)}</p>
<form method="post" action="/interaction/${uid}/consent"><button type="submit">Allow</button></form>`);
    return undefined;
  }
  if (ctx.method === 'POST' && match[3] === 'login' && prompt.name === 'login') {
    const form = await formOf(ctx.req);
    const account = accounts.get(form.get('login'));
    if (!account || account.password !== form.get('password')) {
      ctx.status = 401;
      ctx.type = 'html';
      ctx.body = page('Sign in to the test provider', '<p role="alert">Wrong account or password.</p>');
      return undefined;
    }
    const to = await provider.interactionResult(ctx.req, ctx.res, { login: { accountId: account.id } }, {
      mergeWithLastSubmission: false,
    });
    ctx.status = 303;
    ctx.redirect(to);
    return undefined;
  }
  if (ctx.method === 'POST' && match[3] === 'consent' && prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const to = await provider.interactionResult(ctx.req, ctx.res, { consent: { grantId: await grant.save() } });
    ctx.status = 303;
    ctx.redirect(to);
    return undefined;
  }
  ctx.status = 400;
  ctx.body = 'unexpected interaction step';
  return undefined;
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
