"""skillorchestra.handbook"""
