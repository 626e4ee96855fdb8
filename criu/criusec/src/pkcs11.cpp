#include "pkcs11.h"

#include <cstring>
#include <deque>
#include <mutex>
#include <vector>

#include <gnutls/pkcs11.h>

#include "io.h"
#include "secure_bytes.h"

namespace criusec {

namespace {

constexpr std::string_view kScheme = "pkcs11:";
/* A PIN file holds a line of text; anything near this is not one. */
constexpr size_t kMaxPinFile = 4096;

/*
 * Where a key's PIN comes from.  The token may ask again after the key was
 * loaded (a new session, CKA_ALWAYS_AUTHENTICATE), so what GnuTLS's PIN
 * callback reads lives as long as the process: a path, or the URL's
 * pin-value (already in the process's arguments anyway).
 */
struct PinSpec {
	enum class Kind { None, Value, Source } kind = Kind::None;
	SecureBytes value;   /* Kind::Value */
	std::string source;  /* Kind::Source: a file path */
	std::string failure; /* why the callback could not give a PIN, if it could not */
};

std::mutex g_pins_lock;
std::deque<PinSpec> g_pins; /* stable addresses: userdata of loaded keys */

int hexval(char c) noexcept
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* RFC 3986 percent-decoding, into memory that is wiped (a PIN may be decoded). */
Result<SecureBytes> pct_decode(std::string_view s)
{
	SecureBytes out(s.size());
	size_t n = 0;
	for (size_t i = 0; i < s.size(); i++) {
		if (s[i] != '%') {
			out.data()[n++] = static_cast<uint8_t>(s[i]);
			continue;
		}
		int hi = i + 2 < s.size() ? hexval(s[i + 1]) : -1, lo = hi >= 0 ? hexval(s[i + 2]) : -1;
		if (hi < 0 || lo < 0)
			return invalid_argument("malformed percent-encoding in the PKCS#11 URL");
		out.data()[n++] = static_cast<uint8_t>(hi << 4 | lo);
		i += 2;
	}
	SecureBytes exact(out.span().first(n));
	return exact;
}

bool is_pin_attr(std::string_view attr, std::string_view name) noexcept
{
	return attr.size() > name.size() && attr.substr(0, name.size()) == name && attr[name.size()] == '=';
}

/*
 * Split url into the URL GnuTLS gets (without pin-value and pin-source,
 * which are ours to handle: one attempt, a file read only when asked) and
 * the PIN's origin.  Path attributes are ';'-separated, query attributes
 * (after '?') '&'-separated; p11-kit accepts the PIN attributes in both.
 */
Status split_pin(std::string_view url, std::string &rest, PinSpec &pin)
{
	rest.assign(kScheme);
	std::string_view body = url.substr(kScheme.size());
	size_t q = body.find('?');
	std::string_view parts[2] = {body.substr(0, q), q == std::string_view::npos ? "" : body.substr(q + 1)};
	const char seps[2] = {';', '&'};
	for (int p = 0; p < 2; p++) {
		std::string kept;
		std::string_view s = parts[p];
		while (!s.empty()) {
			size_t e = s.find(seps[p]);
			std::string_view attr = s.substr(0, e);
			s = e == std::string_view::npos ? "" : s.substr(e + 1);
			if (attr.empty())
				continue;
			bool value = is_pin_attr(attr, "pin-value"), source = is_pin_attr(attr, "pin-source");
			if (!value && !source) {
				if (!kept.empty())
					kept += seps[p];
				kept += attr;
				continue;
			}
			if (pin.kind != PinSpec::Kind::None)
				return invalid_argument("the PKCS#11 URL gives more than one pin-value or pin-source");
			auto v = pct_decode(attr.substr(attr.find('=') + 1));
			if (!v.ok())
				return std::move(v).status();
			if (value) {
				pin.kind = PinSpec::Kind::Value;
				pin.value = std::move(v).value();
			} else {
				pin.kind = PinSpec::Kind::Source;
				std::string_view src(reinterpret_cast<const char *>(v.value().data()), v.value().size());
				if (src.substr(0, 5) == "file:")
					src.remove_prefix(5);
				if (src.empty())
					return invalid_argument("the PKCS#11 URL has an empty pin-source");
				pin.source.assign(src);
			}
		}
		if (p == 1 && !kept.empty())
			rest += '?';
		rest += kept;
	}
	return {};
}

/* GnuTLS asks for the PIN of the token holding the key (one attempt only). */
int pin_callback(void *userdata, int attempt, const char *, const char *, unsigned int flags, char *pin,
		 size_t pin_max) noexcept
{
	auto *spec = static_cast<PinSpec *>(userdata);
	if (attempt > 0 || (flags & GNUTLS_PIN_WRONG))
		return GNUTLS_E_PKCS11_PIN_ERROR; /* never guess again: tokens lock */
	SecureBytes file;
	std::span<const uint8_t> value;
	try {
		if (spec->kind == PinSpec::Kind::None)
			return GNUTLS_E_PKCS11_PIN_ERROR;
		if (spec->kind == PinSpec::Kind::Value) {
			value = spec->value.span();
		} else {
			auto r = read_small_file(spec->source.c_str(), kMaxPinFile);
			if (!r.ok()) {
				spec->failure = "pin-source: " + r.status().message(); /* it names the file */
				return GNUTLS_E_PKCS11_PIN_ERROR;
			}
			file = std::move(r).value();
			value = file.span();
			/* A PIN file is a line of text: its line end is not part of the PIN. */
			while (!value.empty() && (value.back() == '\n' || value.back() == '\r'))
				value = value.first(value.size() - 1);
		}
	} catch (...) {
		return GNUTLS_E_MEMORY_ERROR;
	}
	if (value.empty() || value.size() >= pin_max || std::memchr(value.data(), 0, value.size())) {
		spec->failure = "the PIN is empty, too long or not text";
		return GNUTLS_E_PKCS11_PIN_ERROR;
	}
	std::memcpy(pin, value.data(), value.size());
	pin[value.size()] = '\0';
	return 0;
}

PinSpec *keep_pin(PinSpec &&pin)
{
	std::lock_guard<std::mutex> g(g_pins_lock);
	g_pins.push_back(std::move(pin));
	return &g_pins.back();
}

} /* namespace */

bool is_pkcs11_url(std::string_view ref) noexcept
{
	return ref.substr(0, kScheme.size()) == kScheme;
}

std::string key_ref_display(std::string_view ref)
{
	if (!is_pkcs11_url(ref))
		return std::string(ref);
	std::string out;
	out.reserve(ref.size());
	while (!ref.empty()) {
		size_t e = ref.find_first_of(";?&");
		std::string_view attr = ref.substr(0, e);
		out += is_pin_attr(attr, "pin-value") ? "pin-value=(hidden)" : attr;
		if (e == std::string_view::npos)
			break;
		out += ref[e];
		ref.remove_prefix(e + 1);
	}
	return out;
}

Result<PrivKey> load_pkcs11_key(std::string_view url)
{
	std::string bare;
	PinSpec spec;
	CRIUSEC_TRY(split_pin(url, bare, spec));
	const auto kind = spec.kind;
	PinSpec *pin = keep_pin(std::move(spec));

	PrivKey priv;
	int rc = gnutls_privkey_init(priv.out());
	if (rc < 0)
		return gnutls_status("private key", rc);
	/* Before the import, which logs in (and copies the function into the key). */
	gnutls_privkey_set_pin_function(priv.get(), pin_callback, pin);
	rc = gnutls_privkey_import_url(priv.get(), bare.c_str(), 0);
	switch (rc) {
	case 0:
		return priv;
	case GNUTLS_E_PKCS11_PIN_ERROR:
		if (!pin->failure.empty())
			return Status::error(EACCES, pin->failure);
		if (kind == PinSpec::Kind::None)
			return Status::error(EACCES, "the token needs a PIN: add pin-source=FILE (a file holding "
						     "the PIN) to the URL");
		return Status::error(EACCES, "the token refused the PIN (a wrong " +
					     (kind == PinSpec::Kind::Source ? "PIN in pin-source " + pin->source
									    : std::string("pin-value")) +
					     ")");
	case GNUTLS_E_PKCS11_PIN_LOCKED:
		return Status::error(EACCES, "the token's PIN is locked (too many wrong PINs)");
	case GNUTLS_E_PKCS11_PIN_EXPIRED:
		return Status::error(EACCES, "the token's PIN has expired");
	case GNUTLS_E_PKCS11_REQUESTED_OBJECT_NOT_AVAILBLE: /* no such token */
	case GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE:	    /* a token without that key */
		return Status::error(ENOENT, "no such PKCS#11 token or private key (is the token present, and "
					     "its module registered with p11-kit?)");
	case GNUTLS_E_PARSING_ERROR:
	case GNUTLS_E_INVALID_REQUEST:
		return Status::error(EINVAL, std::string("not a valid PKCS#11 URL (RFC 7512): ") + gnutls_strerror(rc));
	default:
		return Status::error(EIO, std::string("PKCS#11: ") + gnutls_strerror(rc));
	}
}

} /* namespace criusec */
