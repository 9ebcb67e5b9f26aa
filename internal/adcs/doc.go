// Package adcs reads what Microsoft AD CS exports: certutil -view dumps of
// the CA database, in text or CSV mode, and the CRLs the CA published.
//
// # Exporting on the CA (the runbook's commands)
//
// Text mode carries each certificate as a PEM block; use it when you can.
// In Windows PowerShell 5.1, where ">" writes UTF-16LE with a BOM:
//
//	certutil -gmt -seconds -view -restrict "Disposition>=20,Disposition<=21" -out "Request.RequestID,SerialNumber,Request.Disposition,NotBefore,NotAfter,Request.RevokedEffectiveWhen,Request.RevokedReason,CommonName,CertificateTemplate,RawCertificate" > C:\adcs-export\db.txt
//
// CSV mode is smaller and faster but carries no certificates (certutil
// prints "1657 Bytes" in the RawCertificate column; keep the column so the
// -out list stays the default one):
//
//	certutil -gmt -seconds -view -restrict "Disposition>=20,Disposition<=21" -out "Request.RequestID,SerialNumber,Request.Disposition,NotBefore,NotAfter,Request.RevokedEffectiveWhen,Request.RevokedReason,CommonName,CertificateTemplate,RawCertificate" csv > C:\adcs-export\db.csv
//
// From cmd.exe add -Unicode after certutil so the redirected file is
// Unicode rather than the console code page. -gmt prints times in UTC
// (Options.Location nil); without it pass the CA's time zone. -seconds
// keeps the seconds certutil otherwise drops. The dates still follow the
// CA's locale: look at a "Certificate Effective Date" and pass the
// matching Options.DateFormat (US 5/28/2026 3:34:12 PM, UK 28/05/2026
// 15:34:12, ISO 2026-05-28 15:34:12, DE 28.05.2026 15:34:12, or a Go
// layout). The restriction keeps issued (20) and revoked (21) rows; a very
// large database can be exported in blocks of request IDs by adding
// "RequestID>0,RequestID<=500000" and so on to -restrict, one file per
// block. On Windows Server 2008 and older use text mode: CSV is unreliable
// there. The CRLs to import are the last published base and delta files
// (C:\Windows\System32\CertSrv\CertEnroll\<CA name>.crl and <CA name>+.crl),
// or "certutil -GetCRL base.crl" and "certutil -GetCRL delta.crl 0 delta".
//
// # Reading
//
// Columns are matched by the position of the -out list (Options.Columns,
// DefaultColumns when nil), never by the header or label text, which
// Windows localizes. The encoding is sniffed (see sniff in encoding.go):
// UTF-16LE with or without a BOM, UTF-8 with or without a BOM, lines that
// are not UTF-8 read as Windows-1252. A file whose first non-blank line
// starts with a double quote is CSV (certutil quotes every cell), anything
// else text mode. Lines are bounded by MaxLine and rows by MaxRow, so
// memory stays bounded whatever the size of the file.
//
// A bad value fails its row only: Next returns a *RowError naming the line
// and the -out column and reads the next row on the following call. Rows
// other than issued and revoked ones (pending, denied, failed, CA
// certificates) may be empty but for their disposition; the importer
// decides what to do with them.
package adcs
