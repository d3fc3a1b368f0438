package sluice.kafka;

import java.net.URI;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.time.LocalDateTime;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.Base64;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;
import javax.security.auth.callback.Callback;
import javax.security.auth.callback.UnsupportedCallbackException;
import javax.security.auth.login.AppConfigurationEntry;
import org.apache.kafka.common.security.auth.AuthenticateCallbackHandler;
import org.apache.kafka.common.security.oauthbearer.OAuthBearerExtensionsValidatorCallback;
import org.apache.kafka.common.security.oauthbearer.OAuthBearerToken;
import org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallback;

/**
 * The test broker's stand-in for AWS MSK IAM: a SASL OAUTHBEARER server callback that
 * accepts only MSK IAM tokens (a SigV4-presigned `kafka-cluster:Connect` URL, base64url
 * encoded) whose signature it recomputes with known credentials.
 *
 * <p>JAAS options of the listener: {@code region} (the region tokens must be signed for),
 * {@code credentials} (comma-separated {@code ACCESS_KEY:SECRET} pairs) and, optionally,
 * {@code maxLifetimeMs}, a lifetime shorter than the token's own 15 minutes, so tests can
 * watch tokens expire and be refreshed.
 *
 * <p>Run as a program it checks one token at a given time, for tests of this logic:
 * {@code java sluice.kafka.MskIamValidator TOKEN NOW_MS REGION ACCESS_KEY:SECRET [MAX_LIFETIME_MS]}.
 */
public class MskIamValidator implements AuthenticateCallbackHandler {
    private static final String ACTION = "kafka-cluster:Connect";
    private static final String SERVICE = "kafka-cluster";
    private static final String EMPTY_SHA256 =
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    private static final DateTimeFormatter AMZ_DATE = DateTimeFormatter.ofPattern("yyyyMMdd'T'HHmmss'Z'");

    private String region;
    private final Map<String, String> secrets = new HashMap<>();
    private long maxLifetimeMs = Long.MAX_VALUE;

    /** Why a token was refused; the message goes to the broker log and the client. */
    public static final class Rejected extends Exception {
        Rejected(String message) {
            super(message);
        }
    }

    /** An accepted token: who signed it and until when it is valid. */
    public record Accepted(String accessKey, long startMs, long expiresMs) {}

    public MskIamValidator() {}

    MskIamValidator(String region, String credentials, long maxLifetimeMs) {
        setUp(region, credentials, maxLifetimeMs);
    }

    private void setUp(String region, String credentials, long maxLifetimeMs) {
        if (region == null || credentials == null) {
            throw new IllegalArgumentException("MskIamValidator needs the JAAS options region and credentials");
        }
        this.region = region;
        for (String pair : credentials.split(",")) {
            int colon = pair.indexOf(':');
            if (colon <= 0) {
                throw new IllegalArgumentException("credentials: expected ACCESS_KEY:SECRET pairs");
            }
            secrets.put(pair.substring(0, colon).trim(), pair.substring(colon + 1).trim());
        }
        this.maxLifetimeMs = maxLifetimeMs;
    }

    @Override
    public void configure(Map<String, ?> configs, String mechanism, List<AppConfigurationEntry> jaasConfigEntries) {
        Map<String, ?> options = jaasConfigEntries.get(0).getOptions();
        Object max = options.get("maxLifetimeMs");
        setUp((String) options.get("region"), (String) options.get("credentials"),
            max == null ? Long.MAX_VALUE : Long.parseLong((String) max));
    }

    @Override
    public void handle(Callback[] callbacks) throws UnsupportedCallbackException {
        for (Callback callback : callbacks) {
            if (callback instanceof OAuthBearerValidatorCallback validator) {
                try {
                    Accepted accepted = verify(validator.tokenValue(), System.currentTimeMillis());
                    validator.token(token(validator.tokenValue(), accepted));
                } catch (Rejected rejected) {
                    System.out.println("MskIamValidator: token rejected: " + rejected.getMessage());
                    validator.error("invalid_token: " + rejected.getMessage(), null, null);
                }
            } else if (callback instanceof OAuthBearerExtensionsValidatorCallback extensions) {
                extensions.inputExtensions().map().keySet().forEach(extensions::valid);
            } else {
                throw new UnsupportedCallbackException(callback);
            }
        }
    }

    @Override
    public void close() {}

    /** Checks one token as of {@code nowMs}: signature, action, region and expiry. */
    public Accepted verify(String token, long nowMs) throws Rejected {
        String url;
        try {
            url = new String(Base64.getUrlDecoder().decode(token), StandardCharsets.UTF_8);
        } catch (IllegalArgumentException e) {
            throw new Rejected("not base64url");
        }
        URI uri;
        try {
            uri = new URI(url);
        } catch (Exception e) {
            throw new Rejected("not a URL");
        }
        String host = uri.getHost();
        if (!"https".equals(uri.getScheme()) || host == null) {
            throw new Rejected("not an https URL");
        }
        if (!host.equals("kafka." + region + ".amazonaws.com")) {
            throw new Rejected("signed for host " + host + ", expected kafka." + region + ".amazonaws.com");
        }
        // Raw (still encoded) parameters, then decoded values.
        Map<String, String> params = new TreeMap<>();
        String query = uri.getRawQuery() == null ? "" : uri.getRawQuery();
        for (String part : query.split("&")) {
            if (part.isEmpty()) continue;
            int eq = part.indexOf('=');
            String name = decode(eq < 0 ? part : part.substring(0, eq));
            String value = eq < 0 ? "" : decode(part.substring(eq + 1));
            if (params.put(name, value) != null) {
                throw new Rejected("parameter " + name + " appears twice");
            }
        }
        if (!ACTION.equals(params.get("Action"))) {
            throw new Rejected("action is " + params.get("Action") + ", not " + ACTION);
        }
        if (!"AWS4-HMAC-SHA256".equals(params.get("X-Amz-Algorithm"))) {
            throw new Rejected("algorithm is not AWS4-HMAC-SHA256");
        }
        if (!"host".equals(params.get("X-Amz-SignedHeaders"))) {
            throw new Rejected("signed headers are not `host`");
        }
        String credential = require(params, "X-Amz-Credential");
        String[] scope = credential.split("/");
        if (scope.length != 5 || !scope[3].equals(SERVICE) || !scope[4].equals("aws4_request")) {
            throw new Rejected("malformed credential scope");
        }
        String accessKey = scope[0];
        if (!scope[2].equals(region)) {
            throw new Rejected("signed for region " + scope[2] + ", this cluster is in " + region);
        }
        String secret = secrets.get(accessKey);
        if (secret == null) {
            throw new Rejected("unknown access key " + accessKey);
        }
        String amzDate = require(params, "X-Amz-Date");
        long startMs;
        try {
            startMs = LocalDateTime.parse(amzDate, AMZ_DATE).toInstant(ZoneOffset.UTC).toEpochMilli();
        } catch (Exception e) {
            throw new Rejected("malformed X-Amz-Date");
        }
        if (!amzDate.startsWith(scope[1])) {
            throw new Rejected("credential date does not match X-Amz-Date");
        }
        long expiresS;
        try {
            expiresS = Long.parseLong(require(params, "X-Amz-Expires"));
        } catch (NumberFormatException e) {
            throw new Rejected("malformed X-Amz-Expires");
        }
        String signature = require(params, "X-Amz-Signature");

        // The canonical request covers every parameter but the signature and the
        // User-Agent, which is appended after signing.
        StringBuilder canonicalQuery = new StringBuilder();
        for (Map.Entry<String, String> e : params.entrySet()) {
            if (e.getKey().equals("X-Amz-Signature") || e.getKey().equals("User-Agent")) continue;
            if (canonicalQuery.length() > 0) canonicalQuery.append('&');
            canonicalQuery.append(encode(e.getKey())).append('=').append(encode(e.getValue()));
        }
        String canonicalRequest = "GET\n/\n" + canonicalQuery + "\nhost:" + host + "\n\nhost\n" + EMPTY_SHA256;
        String stringToSign = "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope[1] + "/" + region + "/" + SERVICE
            + "/aws4_request\n" + hex(sha256(canonicalRequest));
        byte[] key = hmac(("AWS4" + secret).getBytes(StandardCharsets.UTF_8), scope[1]);
        key = hmac(key, region);
        key = hmac(key, SERVICE);
        key = hmac(key, "aws4_request");
        String expected = hex(hmac(key, stringToSign));
        if (!MessageDigest.isEqual(expected.getBytes(StandardCharsets.UTF_8), signature.getBytes(StandardCharsets.UTF_8))) {
            throw new Rejected("signature does not match (wrong secret key for " + accessKey + "?)");
        }
        long expiresMs = startMs + Math.min(expiresS * 1000, maxLifetimeMs);
        if (nowMs >= expiresMs) {
            throw new Rejected("token expired " + (nowMs - expiresMs) + " ms ago");
        }
        if (startMs > nowMs + 300_000) {
            throw new Rejected("token signed in the future");
        }
        return new Accepted(accessKey, startMs, expiresMs);
    }

    private static OAuthBearerToken token(String value, Accepted accepted) {
        return new OAuthBearerToken() {
            public String value() { return value; }
            public Set<String> scope() { return Set.of(); }
            public long lifetimeMs() { return accepted.expiresMs(); }
            public String principalName() { return accepted.accessKey(); }
            public Long startTimeMs() { return accepted.startMs(); }
        };
    }

    private static String require(Map<String, String> params, String name) throws Rejected {
        String value = params.get(name);
        if (value == null) throw new Rejected("missing " + name);
        return value;
    }

    private static String decode(String s) {
        return URLDecoder.decode(s.replace("+", "%2B"), StandardCharsets.UTF_8);
    }

    /** SigV4 URI encoding: unreserved characters as they are, everything else %XX. */
    private static String encode(String s) {
        StringBuilder out = new StringBuilder();
        for (byte b : s.getBytes(StandardCharsets.UTF_8)) {
            char c = (char) (b & 0xff);
            if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
                || c == '-' || c == '_' || c == '.' || c == '~') {
                out.append(c);
            } else {
                out.append(String.format("%%%02X", b & 0xff));
            }
        }
        return out.toString();
    }

    private static byte[] sha256(String s) {
        try {
            return MessageDigest.getInstance("SHA-256").digest(s.getBytes(StandardCharsets.UTF_8));
        } catch (Exception e) {
            throw new IllegalStateException(e);
        }
    }

    private static byte[] hmac(byte[] key, String data) {
        try {
            Mac mac = Mac.getInstance("HmacSHA256");
            mac.init(new SecretKeySpec(key, "HmacSHA256"));
            return mac.doFinal(data.getBytes(StandardCharsets.UTF_8));
        } catch (Exception e) {
            throw new IllegalStateException(e);
        }
    }

    private static String hex(byte[] bytes) {
        StringBuilder out = new StringBuilder();
        for (byte b : bytes) out.append(String.format("%02x", b));
        return out.toString();
    }

    public static void main(String[] args) {
        if (args.length < 4) {
            System.err.println("usage: MskIamValidator TOKEN NOW_MS REGION ACCESS_KEY:SECRET [MAX_LIFETIME_MS]");
            System.exit(2);
        }
        long max = args.length > 4 ? Long.parseLong(args[4]) : Long.MAX_VALUE;
        MskIamValidator validator = new MskIamValidator(args[2], args[3], max);
        try {
            Accepted accepted = validator.verify(args[0], Long.parseLong(args[1]));
            System.out.println("accepted " + accepted.accessKey() + " until " + accepted.expiresMs());
        } catch (Rejected rejected) {
            System.out.println("rejected: " + rejected.getMessage());
            System.exit(1);
        }
    }
}
