package tpmkey

import "errors"

// Errors a caller tells apart.
var (
	// ErrNoTPM: there is no TPM at the path (no device node, no socket).
	ErrNoTPM = errors.New("no TPM")
	// ErrTPMBusy: the TPM is there but busy (another process holds
	// /dev/tpm0, or the TPM asks to retry); trying again later may work.
	ErrTPMBusy = errors.New("the TPM is busy")
	// ErrNotThisTPM: the key blob was made by another TPM. Its storage
	// root key is not this TPM's: the SD card moved between boards.
	ErrNotThisTPM = errors.New("the device key is not in this board's TPM (was the card moved from another board?)")
	// ErrCredential: the proxy's credential does not open in this TPM
	// (it was made for another endorsement or attestation key).
	ErrCredential = errors.New("the challenge's credential does not open in this TPM")
	// ErrBadKeyFile: key.tpm is not a key blob of this format.
	ErrBadKeyFile = errors.New("not a TPM key file")
)
