// A real OpenID Connect provider for the gateway's tests: panva's oidc-provider (OpenID Certified), in memory.
//
//   node provider.js CONFIG.json        (tests/oidc/providers.py writes the file and starts it on a free port)
//
// CONFIG.json (every key optional):
//   port        TCP port on 127.0.0.1 (default 3000)
//   issuer      exact iss (default http://127.0.0.1:PORT)
//   jwks        {"keys": [private JWK, ...]}: the first signs, the others stay published (key rotation is a
//               restart with [new, old]); default: one RSA key generated at start
//   clients     oidc-provider client metadata (confidential code+PKCE+refresh clients, client-credentials
//               clients, ...)
//   resources   {"https://api.example": {"scope": "orders:read orders:write", "ttl": 300}}: resource
//               indicators (RFC 8707); a token requested with resource=URL is a JWT access token whose aud
//               is URL, one without is opaque (introspect it, RFC 7662)
//   ttl         {"AccessToken": 300, "ClientCredentials": 300, "IdToken": 300, "RefreshToken": 3600}
//   registration_token  enables dynamic client registration (RFC 7591) guarded by this initial access token
//   users       {"alice": {"email": ..., "name": ..., "groups": [...]}}; any login name is accepted by the
//               development login form (devInteractions); known users get their claims
//
// Login is the provider's development interaction (a login form, any password); consent is granted
// automatically (loadExistingGrant), so a scripted client only has to submit the login form.
// PKCE (S256 only) is required of every client using the authorization code; refresh tokens are issued
// to clients allowed the refresh_token grant and rotated on use. RP-initiated logout, introspection and
// revocation are on. Prints "oidc-provider listening on URL" when it serves.
import { readFileSync } from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';
import * as oidc from 'oidc-provider';

const config = process.argv[2] ? JSON.parse(readFileSync(process.argv[2], 'utf8')) : {};
const port = config.port ?? 3000;
const issuer = config.issuer ?? `http://127.0.0.1:${port}`;
const users = config.users ?? {};
const resources = config.resources ?? {};

function generatedKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: `gen-${Date.now()}`, use: 'sig', alg: 'RS256' };
}

const resourceScopes = Object.values(resources).flatMap((r) => (r.scope ?? '').split(' ')).filter(Boolean);

const provider = new oidc.Provider(issuer, {
  clients: config.clients ?? [],
  jwks: config.jwks ?? { keys: [generatedKey()] },
  cookies: { keys: ['gateway-tests-cookie-key'] },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups', ...resourceScopes],
  claims: {
    openid: ['sub'],
    profile: ['name'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  async findAccount(ctx, id) {
    const user = users[id] ?? {};
    return {
      accountId: id,
      async claims() {
        return { sub: id, name: user.name ?? id, email: user.email ?? `${id}@example.test`, email_verified: true,
                 groups: user.groups ?? [] };
      },
    };
  },
  features: {
    devInteractions: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    clientCredentials: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    registration: config.registration_token
      ? { enabled: true, initialAccessToken: config.registration_token }
      : { enabled: false },
    resourceIndicators: {
      enabled: true,
      async defaultResource(ctx, client, oneOf) {
        return oneOf ?? undefined;
      },
      async useGrantedResource() {
        return true;
      },
      async getResourceServerInfo(ctx, indicator) {
        const resource = resources[indicator];
        if (!resource) throw new oidc.errors.InvalidTarget();
        return { scope: resource.scope ?? '', audience: indicator, accessTokenFormat: 'jwt',
                 accessTokenTTL: resource.ttl ?? 300, jwt: { sign: { alg: 'RS256' } } };
      },
    },
  },
  pkce: { required: () => true },
  ttl: { AccessToken: 300, ClientCredentials: 300, IdToken: 300, RefreshToken: 3600, ...(config.ttl ?? {}) },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: true,
  // consent is implied: the grant holds what the client asked for (the tests drive the login form only)
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    const grant = grantId
      ? await ctx.oidc.provider.Grant.find(grantId)
      : new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope(ctx.oidc.requestParamScopes ? [...ctx.oidc.requestParamScopes].join(' ') : 'openid');
    grant.addOIDCClaims([...(ctx.oidc.requestParamClaims ?? [])]);
    for (const [indicator] of Object.entries(resources)) {
      grant.addResourceScope(indicator, [...(ctx.oidc.requestParamScopes ?? [])]
        .filter((s) => resourceScopes.includes(s)).join(' '));
    }
    await grant.save();
    return grant;
  },
  renderError(ctx, out) {
    ctx.type = 'json';
    ctx.body = out;
  },
});
provider.proxy = false;

provider.on('server_error', (ctx, err) => console.error('server_error', err));

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
