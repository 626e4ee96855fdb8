/*
 * A checkpoint's key context and its cipher.img header: the master key,
 * checkpoint id, optional parent id, AEAD, chunk size, recipient stanzas,
 * and the header MAC that binds them together.
 */
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "aead.h"
#include "criusec.h"
#include "kdf.h"
#include "pki.h"
#include "secure_bytes.h"
#include "status.h"

namespace criusec {

constexpr uint32_t kFormatVersion = CRIUSEC_FORMAT_VERSION;
constexpr size_t kIdLen = CRIUSEC_ID_LEN;
constexpr size_t kMacLen = CRIUSEC_MAC_LEN;
constexpr size_t kMasterKeyLen = 32;
constexpr uint32_t kDefaultChunkSize = 65536;
constexpr uint32_t kMinChunkSize = 4096;
constexpr uint32_t kMaxChunkSize = 1u << 20;
/* Sanity bounds on an imported header (far above any real use). */
constexpr size_t kMaxRecipients = 1024;
constexpr size_t kMaxWrappedLen = 16384;

static_assert(kFprLen == CRIUSEC_FPR_LEN);

using Id = std::array<uint8_t, kIdLen>;
using Mac = std::array<uint8_t, kMacLen>;

/* HKDF info strings (see Documentation/criusec-format.md). */
inline constexpr std::string_view kInfoHeaderMac = "criusec v1 header mac";
inline constexpr std::string_view kInfoStream = "criusec v1 stream";
inline constexpr std::string_view kInfoPagesXts = "criusec v1 pages xts";

bool valid_chunk_size(uint32_t chunk_size) noexcept;

struct Recipient {
	Fingerprint fpr{};
	uint32_t wrap_alg = CRIUSEC_WRAP_RSA_PKCS1V15;
	std::vector<uint8_t> wrapped;
};

/* A non-owning view of one stanza, e.g. over a struct criusec_recipient. */
struct RecipientView {
	std::span<const uint8_t, kFprLen> fpr;
	uint32_t wrap_alg;
	std::span<const uint8_t> wrapped;
};

/* The header as read back from cipher.img, before anything is trusted. */
struct HeaderView {
	uint32_t version = 0;
	Id ckpt_id{};
	std::optional<Id> parent;
	uint32_t aead = 0;
	uint32_t chunk_size = 0;
	std::vector<RecipientView> recipients;
	Mac mac{};
};

/* The byte string the header MAC covers. */
std::vector<uint8_t> canonical_header(uint32_t version, const Id &ckpt_id, const std::optional<Id> &parent,
				      uint32_t aead, uint32_t chunk_size, std::span<const RecipientView> recipients);

class Ctx {
public:
	/* Dump side: fresh random master key and checkpoint id. */
	[[nodiscard]] static Result<Ctx> create(AeadAlg aead, std::optional<Id> parent,
						uint32_t chunk_size = kDefaultChunkSize);
	/* From known material: used by import, and by tests and fuzzers for determinism. */
	[[nodiscard]] static Result<Ctx> from_master_key(std::span<const uint8_t> mk, const Id &id,
							 std::optional<Id> parent, AeadAlg aead, uint32_t chunk_size);
	/*
	 * Restore side: pick the stanza of key_pem's key, unwrap the master
	 * key and verify the header MAC before returning anything.
	 */
	[[nodiscard]] static Result<Ctx> import(const HeaderView &hdr, std::span<const uint8_t> key_pem);

	/* Wrap the master key for the RSA key of a PEM certificate. */
	[[nodiscard]] Status add_recipient(std::span<const uint8_t> cert_pem);

	/* The MAC over the current header fields (fails with no recipient). */
	[[nodiscard]] Result<Mac> header_mac() const;
	/* The MAC this context's key gives a header's fields (hdr.mac is ignored). */
	[[nodiscard]] Result<Mac> mac_over(const HeaderView &hdr) const;

	/* HKDF-Expand(PRK, info, len): every subkey comes from here. */
	[[nodiscard]] Result<SecureBytes> derive(std::span<const uint8_t> info, size_t len) const;

	const Id &id() const noexcept { return id_; }
	const std::optional<Id> &parent() const noexcept { return parent_; }
	AeadAlg aead() const noexcept { return aead_; }
	uint32_t chunk_size() const noexcept { return chunk_size_; }
	const std::vector<Recipient> &recipients() const noexcept { return recipients_; }

private:
	Ctx() = default;
	std::vector<RecipientView> recipient_views() const;

	SecureBytes mk_;
	SecureBytes prk_; /* HKDF-Extract(salt = id, IKM = mk) */
	Id id_{};
	std::optional<Id> parent_;
	AeadAlg aead_ = AeadAlg::Aes256Gcm;
	uint32_t chunk_size_ = kDefaultChunkSize;
	std::vector<Recipient> recipients_;
};

} /* namespace criusec */
