package install

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"strings"

	"github.com/CalebQ42/squashfs"

	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/deviceclient/inspect"
	"github.com/fleetprov/prov/internal/untrusted"
	"github.com/fleetprov/prov/pki/signedimage"
)

// Check runs the checks of docs/image-format.md that follow the signature
// and digest, on an image that passed them: the pre-mount inspection
// (steps 25 to 39), then the comparison of /etc/prov/image.json with the
// statement (step 40). Every device path (install, boot, prov-device
// verify) runs it, so they agree.
func Check(v *signedimage.Verified, img []byte, rules imagespec.Rules) (*inspect.Listing, error) {
	l, err := inspect.Inspect(bytes.NewReader(img), int64(len(img)), inspect.Expect{Rules: rules, Serial: v.Serial, Generation: v.Generation})
	if err != nil {
		if _, ok := signedimage.RefusalOf(err); ok {
			return nil, err
		}
		return nil, signedimage.Refuse(signedimage.StepInspection, err)
	}
	if err := checkMetadata(v.Statement, img); err != nil {
		return nil, err
	}
	return l, nil
}

// checkMetadata is step 40: the image's /etc/prov/image.json must be, byte
// for byte, what the builder writes for the statement (format, serial,
// generation and issuedAt, in that order, compact, and a newline), so that
// an issue time or any other member the two share cannot differ, and the
// file has one spelling as the statement has.
func checkMetadata(st signedimage.Statement, img []byte) error {
	want, err := imagespec.MarshalMetadata(imagespec.ImageMetadata{
		Format: st.Format, Serial: st.Serial, Generation: st.Generation, IssuedAt: st.IssuedAt,
	})
	if err != nil {
		return fmt.Errorf("image metadata: %w", err)
	}
	// The inspection has checked the whole image, so the reader meets
	// nothing it was not shown already.
	rdr, err := squashfs.NewReader(io.NewSectionReader(bytes.NewReader(img), 0, int64(len(img))))
	if err != nil {
		return signedimage.Refuse(signedimage.StepMetadata, fmt.Errorf("read the image: %w", err))
	}
	got, err := fs.ReadFile(rdr, strings.TrimPrefix(imagespec.Metadata, "/"))
	if err != nil {
		return signedimage.Refuse(signedimage.StepMetadata, fmt.Errorf("read %s: %w", imagespec.Metadata, err))
	}
	if !bytes.Equal(got, want) {
		return signedimage.Refuse(signedimage.StepMetadata, fmt.Errorf("%s holds %q, the statement makes it %q",
			imagespec.Metadata, untrusted.Short(string(got)), want))
	}
	return nil
}
